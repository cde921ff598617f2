/*
 * imgtool: termios.h for wasm32-wasi. There is no terminal: tcgetattr and
 * tcsetattr fail with ENOTTY, so callers fall back to their non-tty paths.
 */
#ifndef IMGTOOL_WASI_TERMIOS_H
#define IMGTOOL_WASI_TERMIOS_H
typedef unsigned int tcflag_t;
typedef unsigned char cc_t;
#define NCCS 32
struct termios {
	tcflag_t c_iflag;
	tcflag_t c_oflag;
	tcflag_t c_cflag;
	tcflag_t c_lflag;
	cc_t c_cc[NCCS];
};
#define VTIME 5
#define VMIN 6
#define ISIG 0000001
#define ICANON 0000002
#define ECHO 0000010
#define OPOST 0000001
#define ONLCR 0000004
#define TCSANOW 0
#define TCSADRAIN 1
#define TCSAFLUSH 2
int tcgetattr(int fd, struct termios *t);
int tcsetattr(int fd, int action, const struct termios *t);
#endif
