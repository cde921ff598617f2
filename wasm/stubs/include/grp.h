/* imgtool: grp.h for wasm32-wasi (no group database: every lookup fails). */
#ifndef IMGTOOL_WASI_GRP_H
#define IMGTOOL_WASI_GRP_H
#include <sys/types.h>
struct group {
	char *gr_name;
	char *gr_passwd;
	gid_t gr_gid;
	char **gr_mem;
};
struct group *getgrgid(gid_t gid);
struct group *getgrnam(const char *name);
#endif
