#ifndef TOPSERVE_SERVER_SOCKETS_H_
#define TOPSERVE_SERVER_SOCKETS_H_

// The TCP sockets of this process on one local port, found through /proc/self/fd. The drain needs
// two things gRPC C++ (1.51) has no API for short of grpc::Server::Shutdown(), which answers calls
// racing its GOAWAY CANCELLED (grpc/grpc#41785): to stop accepting connections while the service
// keeps answering the ones it has, and to know when the last of those has closed.

namespace topserve::server {

// Stops every listening socket of this process on `port`: the kernel refuses new connections,
// which clients and proxies treat as "try elsewhere"; accepted connections are untouched. The
// descriptor numbers stay open (on an unconnected socket) for their owner to close. Returns how
// many listeners it stopped.
int StopListeningOnPort(int port);

// How many accepted (non-listening) TCP sockets of this process have `port` as their local port.
int ConnectionsOnPort(int port);

}  // namespace topserve::server

#endif  // TOPSERVE_SERVER_SOCKETS_H_
