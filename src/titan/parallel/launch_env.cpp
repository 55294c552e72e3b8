#include "titan/parallel/launch_env.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "titan/core/env.h"
#include "titan/core/error.h"

namespace titan::parallel {

namespace {
using Clock = std::chrono::steady_clock;
constexpr char kMagic[8] = {'t', 'i', 't', 'a', 'n', 'r', 'd', 'v'};  // a foreign server is refused, not misread

int launcher_world_size() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"}) {
    if (const char* v = std::getenv(var)) {
      const int n = std::atoi(v);
      if (n > 0) return n;
    }
  }
  return 1;
}

int launcher_local_rank() {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"})
    if (std::getenv(var)) return env_int(var, 0, 0, 1 << 20);
  return 0;
}

class Socket {
 public:
  explicit Socket(int fd = -1) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Socket(Socket&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Socket& operator=(Socket&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

double seconds_left(Clock::time_point deadline) {
  return std::chrono::duration<double>(deadline - Clock::now()).count();
}

// Waits for `events` on fd until the deadline; false on timeout.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const double left = seconds_left(deadline);
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min(left, 60.0) * 1000) + 1);
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return false;
  }
}

// Moves all n bytes with `io` (a send or recv of up to `left` bytes from `done`), waiting for
// `events` before each call; false on a closed peer, an error or the deadline.
template <typename Io>
bool transfer_all(int fd, short events, size_t n, Clock::time_point deadline, Io io) {
  for (size_t done = 0; done < n;) {
    if (!wait_for(fd, events, deadline)) return false;
    const ssize_t k = io(done, n - done);
    if (k <= 0) {
      if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      return false;
    }
    done += static_cast<size_t>(k);
  }
  return true;
}

bool send_all(int fd, const char* data, size_t n, Clock::time_point deadline) {
  return transfer_all(fd, POLLOUT, n, deadline,
                      [&](size_t done, size_t left) { return ::send(fd, data + done, left, MSG_NOSIGNAL); });
}

bool recv_all(int fd, char* data, size_t n, Clock::time_point deadline) {
  return transfer_all(fd, POLLIN, n, deadline, [&](size_t done, size_t left) { return ::recv(fd, data + done, left, 0); });
}

// A listening socket on every address (IPv6 with IPv4 mapped, or IPv4 where IPv6 is off),
// non-blocking so an accept never waits on a client that went away.
Socket listen_on(int port) {
  Socket s(::socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0));
  const int on = 1, off = 0;
  if (s.fd() >= 0) {
    ::setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    ::setsockopt(s.fd(), IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
    sockaddr_in6 addr{};
    addr.sin6_family = AF_INET6;
    addr.sin6_addr = in6addr_any;
    addr.sin6_port = htons(static_cast<uint16_t>(port));
    if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 && ::listen(s.fd(), 128) == 0) return s;
    if (errno == EADDRINUSE) return Socket();
  }
  s = Socket(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
  if (s.fd() < 0) return s;
  ::setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(s.fd(), 128) != 0) return Socket();
  return s;
}

std::string serve(const LaunchEnv& env, const std::string& payload, Clock::time_point deadline, double timeout) {
  const std::string where = concat("port ", env.master_port);
  Socket listener = listen_on(env.master_port);
  if (listener.fd() < 0)
    throw UserError(concat("rendezvous: rank 0 cannot listen on ", where, " (MASTER_PORT + 1, or TITAN_RDZV_PORT): ",
                           std::strerror(errno)));
  std::string frame(kMagic, sizeof kMagic);
  const uint64_t size = payload.size();
  frame.append(reinterpret_cast<const char*>(&size), sizeof size);
  frame += payload;
  // Each client names its rank first: a retried or stray connection cannot use up a rank's turn.
  std::vector<bool> served(static_cast<size_t>(env.world), false);
  served[0] = true;
  for (int left = env.world - 1; left > 0;) {
    if (!wait_for(listener.fd(), POLLIN, deadline))
      throw UserError(concat("rendezvous: rank 0 heard from ", env.world - 1 - left, " of ", env.world - 1, " ranks on ",
                             where, " within ", timeout,
                             " s (are all ranks started, with the same MASTER_ADDR and MASTER_PORT?)"));
    Socket client(::accept4(listener.fd(), nullptr, nullptr, SOCK_NONBLOCK));
    if (client.fd() < 0) continue;  // gone again, or nothing after all
    int32_t rank = -1;
    if (!recv_all(client.fd(), reinterpret_cast<char*>(&rank), sizeof rank, deadline) || rank <= 0 || rank >= env.world)
      continue;
    if (send_all(client.fd(), frame.data(), frame.size(), deadline) && !served[static_cast<size_t>(rank)]) {
      served[static_cast<size_t>(rank)] = true;
      --left;
    }
  }
  return payload;
}

// Connects within the deadline (a non-blocking connect, so an unreachable host cannot hold it).
Socket connect_before(const addrinfo* a, Clock::time_point deadline) {
  Socket s(::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK, a->ai_protocol));
  if (s.fd() < 0) return s;
  if (::connect(s.fd(), a->ai_addr, a->ai_addrlen) == 0) return s;
  if (errno != EINPROGRESS || !wait_for(s.fd(), POLLOUT, deadline)) return Socket();
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) return Socket();
  return s;
}

std::string fetch(const LaunchEnv& env, Clock::time_point deadline, double timeout) {
  const std::string where = concat(env.master_addr, ":", env.master_port);
  addrinfo hints{}, *found = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (const int rc = ::getaddrinfo(env.master_addr.c_str(), std::to_string(env.master_port).c_str(), &hints, &found); rc != 0)
    throw UserError(concat("rendezvous: rank ", env.rank, ": MASTER_ADDR=", env.master_addr, ": ", ::gai_strerror(rc)));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> list(found, ::freeaddrinfo);
  while (seconds_left(deadline) > 0) {
    for (addrinfo* a = list.get(); a; a = a->ai_next) {
      const auto attempt = std::min(deadline, Clock::now() + std::chrono::seconds(5));
      Socket s = connect_before(a, attempt);
      if (s.fd() < 0) continue;
      const int32_t rank = env.rank;
      char magic[sizeof kMagic];
      uint64_t size = 0;
      if (!send_all(s.fd(), reinterpret_cast<const char*>(&rank), sizeof rank, deadline) ||
          !recv_all(s.fd(), magic, sizeof magic, deadline))
        continue;
      if (std::memcmp(magic, kMagic, sizeof kMagic) != 0)
        throw UserError(concat("rendezvous: rank ", env.rank, ": ", where, " is not a titan rank 0"));
      if (!recv_all(s.fd(), reinterpret_cast<char*>(&size), sizeof size, deadline) || size > (1u << 20)) continue;
      std::string payload(size, '\0');
      if (recv_all(s.fd(), payload.data(), size, deadline)) return payload;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // rank 0 may not listen yet
  }
  throw UserError(concat("rendezvous: rank ", env.rank, " could not reach rank 0 at ", where, " within ", timeout,
                         " s (MASTER_ADDR/MASTER_PORT; is rank 0 running?)"));
}
}  // namespace

LaunchEnv detect_launch() {
  LaunchEnv env;
  // torchrun's variables first: `srun ... torchrun` also leaves Slurm's task count behind.
  if (std::getenv("WORLD_SIZE")) {
    env.world = env_int("WORLD_SIZE", 1, 1, 1 << 20);
    if (env.world > 1 && !std::getenv("RANK"))
      throw UserError(concat("environment: WORLD_SIZE=", env.world, " needs RANK (this process's rank)"));
    env.rank = env_int("RANK", 0, 0, 1 << 20);
    env.local_rank = env_int("LOCAL_RANK", 0, 0, 1 << 20);
    if (env.rank >= env.world)
      throw UserError(concat("environment: RANK=", env.rank, " is not below WORLD_SIZE=", env.world));
    if (env.world == 1) return env;
    env.kind = LaunchEnv::Kind::torchrun;
    const char* addr = std::getenv("MASTER_ADDR");
    if (!addr || !*addr) throw UserError("environment: WORLD_SIZE > 1 needs MASTER_ADDR (rank 0's host name or address)");
    env.master_addr = addr;
    // torchrun's own store may listen on MASTER_PORT: titan's rendezvous takes the next port.
    env.master_port = std::getenv("TITAN_RDZV_PORT") ? env_int("TITAN_RDZV_PORT", 0, 1, 65535)
                                                     : env_int("MASTER_PORT", 29500, 1, 65534) + 1;
    return env;
  }
  if (const int n = launcher_world_size(); n > 1) {
    env.kind = LaunchEnv::Kind::mpi;
    env.world = n;
    env.local_rank = launcher_local_rank();
  }
  return env;
}

std::string tcp_broadcast(const LaunchEnv& env, const std::string& payload, double timeout_seconds) {
  TITAN_CHECK(env.kind == LaunchEnv::Kind::torchrun, "tcp_broadcast outside a torchrun-style start");
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_seconds));
  return env.rank == 0 ? serve(env, payload, deadline, timeout_seconds) : fetch(env, deadline, timeout_seconds);
}

}  // namespace titan::parallel
