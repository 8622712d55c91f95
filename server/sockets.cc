#include "server/sockets.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

namespace topserve::server {
namespace {

enum class Kind { kNone, kListener, kConnection };

// What `fd` is: a TCP socket (IPv4 or IPv6) bound to `port`, listening or not. Read-only calls,
// so a descriptor that another thread closes (or reuses) meanwhile does no harm.
Kind KindOf(int fd, int port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return Kind::kNone;
  int local_port = -1;
  if (addr.ss_family == AF_INET) {
    local_port = ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    local_port = ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
  }
  if (local_port != port) return Kind::kNone;
  int type = 0;
  socklen_t type_len = sizeof(type);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 || type != SOCK_STREAM) {
    return Kind::kNone;
  }
  int listening = 0;
  socklen_t listening_len = sizeof(listening);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &listening_len) != 0) {
    return Kind::kNone;
  }
  if (listening) return Kind::kListener;
  // A stopped listener keeps its port but has no peer; so does a connection being torn down.
  sockaddr_storage peer{};
  socklen_t peer_len = sizeof(peer);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) return Kind::kNone;
  return Kind::kConnection;
}

template <typename Visit>
void ForEachSocket(Visit visit) {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", error)) {
    const std::string name = entry.path().filename().string();
    char* end = nullptr;
    const long fd = std::strtol(name.c_str(), &end, 10);
    if (end == name.c_str() || *end != '\0') continue;
    visit(static_cast<int>(fd));
  }
}

}  // namespace

int StopListeningOnPort(int port) {
  int stopped = 0;
  ForEachSocket([&](int fd) {
    if (KindOf(fd, port) != Kind::kListener) return;
    // Not shutdown(2) on the listener: that wakes gRPC's poller, whose accept4() then fails and
    // logs an error at every drain. dup3() over it releases the listener instead (the kernel
    // refuses connections to the port from then on, and drops it from gRPC's epoll set) and
    // leaves an unconnected socket under the descriptor number gRPC still owns and closes at its
    // shutdown.
    const int placeholder = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (placeholder < 0) return;
    if (dup3(placeholder, fd, O_CLOEXEC) == fd) ++stopped;
    close(placeholder);
  });
  return stopped;
}

int ConnectionsOnPort(int port) {
  int count = 0;
  ForEachSocket([&](int fd) {
    if (KindOf(fd, port) == Kind::kConnection) ++count;
  });
  return count;
}

}  // namespace topserve::server
