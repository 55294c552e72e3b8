#include "titan/core/stop_signals.h"

#include <unistd.h>

#include <cstring>
#include <initializer_list>

namespace titan {

namespace {
// A signal handler can reach only state of this kind.
volatile std::sig_atomic_t g_signal = 0;
volatile std::sig_atomic_t g_training = 0;

void say(const char* text) {
  const ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

extern "C" void on_stop_signal(int sig) {
  if (g_signal != 0 || g_training == 0) {  // only async-signal-safe calls from here on
    say(g_signal != 0 ? "titan: second stop signal: ending now (the last checkpoint is intact)\n"
                      : "titan: stop signal during start-up: ending now\n");
    ::_exit(128 + sig);
  }
  g_signal = sig;
}
}  // namespace

const char* signal_name(int sig) {
  switch (sig) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGHUP: return "SIGHUP";
    default: return "a stop signal";
  }
}

void install_stop_handlers() {
  g_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    // A signal the launcher ignores stays ignored: nohup ignores SIGHUP, a shell's background job SIGINT.
    struct sigaction old {};
    if (sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    sigaction(sig, &sa, nullptr);
  }
}

void set_stop_phase(StopPhase phase) { g_training = phase == StopPhase::training ? 1 : 0; }

int stop_requested() { return g_signal; }

}  // namespace titan
