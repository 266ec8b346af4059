/* The pod sandbox ("pause") process of hack/cluster.sh's node: holds the pod's namespaces, reaps zombies,
   exits on SIGINT/SIGTERM. Built static, so the image needs nothing else. */
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
static void quit(int sig) { (void)sig; _exit(0); }
int main(void) {
    signal(SIGINT, quit); signal(SIGTERM, quit); signal(SIGCHLD, reap);
    for (;;) pause();
}
