/*
 * imgtool: definitions for compat.h and the stub headers (see there).
 * wasm32-wasi is a single-user sandbox without processes or terminals.
 */
#include <errno.h>
#include <stdio.h>
#include <sys/types.h>
#include <pwd.h>
#include <grp.h>
#include <termios.h>

uid_t getuid(void) { return 0; }
uid_t geteuid(void) { return 0; }
gid_t getgid(void) { return 0; }
gid_t getegid(void) { return 0; }
pid_t getppid(void) { return 1; }
mode_t umask(mode_t mask) { (void)mask; return 022; }
int fchmod(int fd, mode_t mode) { (void)fd; (void)mode; return 0; }
int fchown(int fd, uid_t o, gid_t g) { (void)fd; (void)o; (void)g; return 0; }
int chown(const char *p, uid_t o, gid_t g) { (void)p; (void)o; (void)g; return 0; }
int dup(int fd) { (void)fd; errno = ENOSYS; return -1; }
int dup2(int fd, int fd2) { (void)fd; (void)fd2; errno = ENOSYS; return -1; }
int mkstemp(char *tmpl) { (void)tmpl; errno = ENOSYS; return -1; }
FILE *popen(const char *cmd, const char *mode) { (void)cmd; (void)mode; errno = ENOSYS; return NULL; }
int pclose(FILE *f) { (void)f; errno = ECHILD; return -1; }
pid_t fork(void) { errno = ENOSYS; return -1; }
int daemon(int a, int b) { (void)a; (void)b; errno = ENOSYS; return -1; }
unsigned alarm(unsigned s) { (void)s; return 0; }
void sync(void) {}
int pipe(int fds[2]) { (void)fds; errno = ENOSYS; return -1; }
int execvp(const char *f, char *const argv[]) { (void)f; (void)argv; errno = ENOSYS; return -1; }
pid_t waitpid(pid_t p, int *s, int o) { (void)p; (void)s; (void)o; errno = ECHILD; return -1; }
pid_t wait(int *s) { (void)s; errno = ECHILD; return -1; }
int mknod(const char *p, mode_t m, dev_t d) { (void)p; (void)m; (void)d; errno = ENOSYS; return -1; }
int mkfifo(const char *p, mode_t m) { (void)p; (void)m; errno = ENOSYS; return -1; }
void tzset(void) {}

struct passwd *getpwuid(uid_t uid) { (void)uid; return NULL; }
struct passwd *getpwnam(const char *name) { (void)name; return NULL; }
int getpwuid_r(uid_t uid, struct passwd *pwd, char *buf, size_t len, struct passwd **res)
{
	(void)uid; (void)pwd; (void)buf; (void)len;
	*res = NULL;
	return ENOENT;
}
struct group *getgrgid(gid_t gid) { (void)gid; return NULL; }
struct group *getgrnam(const char *name) { (void)name; return NULL; }

int tcgetattr(int fd, struct termios *t) { (void)fd; (void)t; errno = ENOTTY; return -1; }
int tcsetattr(int fd, int a, const struct termios *t) { (void)fd; (void)a; (void)t; errno = ENOTTY; return -1; }

#include <string.h>
int gethostname(char *name, size_t len)
{
	if (len < sizeof("localhost")) { errno = ENAMETOOLONG; return -1; }
	memcpy(name, "localhost", sizeof("localhost"));
	return 0;
}
