// StopListeningOnPort / ConnectionsOnPort against real loopback sockets: the drain relies on them
// to refuse new connections and to see when the last client connection has closed.
#include "server/sockets.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace topserve::server {
namespace {

sockaddr_in Loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

// A listener on a free loopback port; returns its fd and sets *port.
int Listen(int* port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = Loopback(0);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(listen(fd, 8), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  *port = ntohs(addr.sin_port);
  return fd;
}

int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = Loopback(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

TEST(Sockets, CountsAcceptedConnectionsAndStopsTheListener) {
  int port = 0;
  const int listener = Listen(&port);
  int other_port = 0;
  const int other_port_listener = Listen(&other_port);  // Not counted: another port.
  ASSERT_NE(other_port, port);
  EXPECT_EQ(ConnectionsOnPort(port), 0);
  const int other_client = Connect(other_port);
  const int other_served = accept(other_port_listener, nullptr, nullptr);
  ASSERT_GE(other_served, 0);

  const int client_a = Connect(port);
  const int client_b = Connect(port);
  ASSERT_GE(client_a, 0);
  ASSERT_GE(client_b, 0);
  // Connected but not yet accepted: this process holds only the client ends, whose local port
  // is an ephemeral one.
  EXPECT_EQ(ConnectionsOnPort(port), 0);
  const int served_a = accept(listener, nullptr, nullptr);
  const int served_b = accept(listener, nullptr, nullptr);
  ASSERT_GE(served_a, 0);
  ASSERT_GE(served_b, 0);
  EXPECT_EQ(ConnectionsOnPort(port), 2);

  EXPECT_EQ(StopListeningOnPort(port), 1);
  EXPECT_EQ(Connect(port), -1) << "a stopped listener must refuse connections";
  // Accepted connections are untouched and still carry data.
  ASSERT_EQ(write(client_a, "x", 1), 1);
  char byte = 0;
  EXPECT_EQ(read(served_a, &byte, 1), 1);
  EXPECT_EQ(byte, 'x');
  // The stopped listener is neither a listener nor a connection any more.
  EXPECT_EQ(StopListeningOnPort(port), 0);
  EXPECT_EQ(ConnectionsOnPort(port), 2);

  close(served_a);
  EXPECT_EQ(ConnectionsOnPort(port), 1);
  close(served_b);
  EXPECT_EQ(ConnectionsOnPort(port), 0);
  EXPECT_EQ(ConnectionsOnPort(other_port), 1);
  for (int fd : {client_a, client_b, listener, other_client, other_served, other_port_listener}) {
    close(fd);
  }
}

}  // namespace
}  // namespace topserve::server
