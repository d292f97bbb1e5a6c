/* A test workload: prints its host name (the pod's name, set by the runtime
 * in the pod's UTS namespace) and its uid, then exits 0, so a test can tell
 * from the log that this very pod ran. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
  char host[256] = "";
  if (gethostname(host, sizeof host - 1) != 0) return 1;
  printf("vispyr-hello host=%s uid=%u\n", host, (unsigned)getuid());
  return fflush(stdout) == 0 ? 0 : 1;
}
