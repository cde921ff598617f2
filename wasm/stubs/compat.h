/*
 * imgtool: declarations wasi-libc hides or lacks, force-included
 * (-include) into every e2fsprogs translation unit at make time (not at
 * configure time, so configure's own probes see the real libc).
 * The definitions are in stubs.c. Semantics: a single-user, process-less
 * sandbox: ids are 0, process creation fails with ENOSYS, umask is a no-op.
 */
#ifndef IMGTOOL_WASI_COMPAT_H
#define IMGTOOL_WASI_COMPAT_H
#include <sys/types.h>
#include <stdio.h>

uid_t getuid(void);
uid_t geteuid(void);
gid_t getgid(void);
gid_t getegid(void);
pid_t getppid(void);
mode_t umask(mode_t mask);
int fchmod(int fd, mode_t mode);
int fchown(int fd, uid_t owner, gid_t group);
int chown(const char *path, uid_t owner, gid_t group);
int dup(int fd);
int dup2(int fd, int fd2);
int mkstemp(char *tmpl);
FILE *popen(const char *cmd, const char *mode);
int pclose(FILE *f);
pid_t fork(void);
int daemon(int nochdir, int noclose);
unsigned alarm(unsigned seconds);
void sync(void);
int pipe(int fds[2]);
int execvp(const char *file, char *const argv[]);
pid_t waitpid(pid_t pid, int *status, int options);
pid_t wait(int *status);
int mknod(const char *path, mode_t mode, dev_t dev);
int mkfifo(const char *path, mode_t mode);
void tzset(void);

#ifndef makedev
#define makedev(maj, min) ((dev_t)((((maj) & 0xfffu) << 8) | ((min) & 0xffu) | (((min) & 0xfff00u) << 12)))
#define major(dev) ((unsigned)(((dev) >> 8) & 0xfff))
#define minor(dev) ((unsigned)(((dev) & 0xff) | (((dev) >> 12) & 0xfff00)))
#endif

/* Record locks (lib/uuid's clock file, never opened here: no /var/lib). */
#include <fcntl.h>
#ifndef F_SETLK
#define F_GETLK 5
#define F_SETLK 6
#define F_SETLKW 7
#define F_RDLCK 0
#define F_WRLCK 1
#define F_UNLCK 2
#endif

#endif
