/* A test workload: prints its host name (the pod's name, set by the runtime
 * in the pod's UTS namespace) and its uid, so a test can tell from the log
 * that this very pod ran. With an argument IPv4:PORT it also opens a TCP
 * connection there (e.g. to the apiserver, proving the pod network reaches
 * the node) and fails if it cannot. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int reach(const char *target) {
  char host[64];
  const char *colon = strrchr(target, ':');
  if (!colon || (size_t)(colon - target) >= sizeof host) {
    fprintf(stderr, "vispyr-hello: '%s' is not IPv4:PORT\n", target);
    return 0;
  }
  memcpy(host, target, colon - target);
  host[colon - target] = 0;
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(colon + 1))};
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
    fprintf(stderr, "vispyr-hello: '%s' is not an IPv4 address\n", host);
    return 0;
  }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    perror("vispyr-hello: connect");
    return 0;
  }
  close(fd);
  return 1;
}

int main(int argc, char **argv) {
  char host[256] = "";
  if (gethostname(host, sizeof host - 1) != 0) return 1;
  printf("vispyr-hello host=%s uid=%u", host, (unsigned)getuid());
  if (argc > 1) {
    if (!reach(argv[1])) return 1;
    printf(" reached=%s", argv[1]);
  }
  printf("\n");
  return fflush(stdout) == 0 ? 0 : 1;
}
