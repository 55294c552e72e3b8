// SIGINT, SIGTERM and SIGHUP (a dropped SSH session) ask a run to stop. While it trains, the first
// one stops it cleanly after the step in progress (with a save); during start-up, or on a second
// signal, the process ends at once: whatever it waits on (a stalled read, a long step), and with
// the last checkpoint intact, as after kill -9.
#pragma once
#include <csignal>

namespace titan {

enum class StopPhase { starting, training };

// Installs the handlers, leaving alone a signal that is already ignored (nohup's SIGHUP), and
// resets the request.
void install_stop_handlers();
void set_stop_phase(StopPhase phase);
// The signal that asked to stop, or 0.
int stop_requested();
const char* signal_name(int sig);

}  // namespace titan
