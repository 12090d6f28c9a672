/*
 * The client <-> service wire format (docs/service.md), shared by
 * vmm/client/instar_client.c and vmm/serve.c; lib/service/protocol.ts
 * mirrors it. Little-endian, one request per connection over a Unix
 * SOCK_STREAM socket.
 */
#ifndef INSTAR_PROTOCOL_H
#define INSTAR_PROTOCOL_H
#include <stdint.h>

#define INSTAR_REQ_MAGIC "INSTAR\x01\n" /* 8 bytes: name, protocol version 1 */
#define INSTAR_REPLY_MAGIC "IRPY"
#define INSTAR_REQ_MAX (1u << 20)        /* whole request, header included */
#define INSTAR_ARGS_MAX 4096u            /* argc and envc each */
#define INSTAR_MSG_MAX 4096u             /* a reply frame's message */
#define INSTAR_RLIM_NONE UINT64_MAX      /* RLIM_INFINITY on the wire */

struct instar_req_head {
    char magic[8];
    uint32_t len;  /* the whole request: this header + the strings */
    uint32_t argc; /* argv after the program name */
    uint32_t envc; /* "NAME=value" entries */
    uint32_t flags; /* 0 */
    uint64_t rlimit_as;  /* the client's soft RLIMIT_AS in bytes */
    uint64_t rlimit_cpu; /* the client's soft RLIMIT_CPU in seconds */
};
/* then: cwd, argv[0..argc), env[0..envc), each NUL-terminated */

enum { INSTAR_REPLY_EXIT = 1 };

struct instar_reply {
    char magic[4];
    uint32_t kind;    /* INSTAR_REPLY_EXIT: the last frame */
    int32_t code;     /* the exit status */
    uint32_t msg_len; /* then msg_len bytes the client writes to its stderr */
};

_Static_assert(sizeof(struct instar_req_head) == 40, "request header is 40 bytes");
_Static_assert(sizeof(struct instar_reply) == 16, "reply header is 16 bytes");

#endif
