/*
 * cnaifs's FUSE addon: libfuse 3's low-level API under Node-API.
 *
 * Threads and who answers what:
 *  - The loop thread (one per session, ours) mounts, runs fuse_session_loop_mt, and tears the session down.
 *  - libfuse's worker threads read requests. Every request that needs the filesystem is recorded in the
 *    session's request table and handed to JavaScript through a napi_threadsafe_function called without
 *    blocking; the worker returns at once without replying. Requests that need no filesystem (anything that
 *    writes, flush, forget) are answered right there.
 *  - JavaScript answers later with one of the reply functions (fuse_reply_* is thread-safe). A read answered
 *    from a file range is queued to the session's reply pool, whose threads read the range and write the
 *    reply (or have libfuse splice it), so no file I/O happens on the JavaScript thread.
 *  - When the loop ends, every request still in the table is answered EIO before the session is destroyed;
 *    a later answer from JavaScript finds its request gone and is dropped (requests.c explains the race).
 */
#ifndef CNAIFS_FUSE_H
#define CNAIFS_FUSE_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <node_api.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* ------------------------------------------------------------------------------------------------------ */
/* Events handed to JavaScript: the first argument of the dispatch callback. Kept in sync with
 * src/fuse/fuse3-binding.ts (which reads them from the module's `events` export). */
enum cn_event {
  CN_EV_MOUNTED = 1, /* str: error message, or NULL when mounted */
  CN_EV_INIT,        /* a: max_write, b: max_readahead, c: proto_minor; ino: conn.want */
  CN_EV_ENDED,       /* a: the loop's result (0 or -errno) */
  CN_EV_FORGET,      /* ino, a: nlookup (never answered) */
  CN_EV_BATCH_FORGET,/* extra: Float64Array of (ino, nlookup) pairs */
  /* Requests: `id` names the request in the reply functions. */
  CN_EV_LOOKUP,      /* ino: parent, str: name */
  CN_EV_GETATTR,     /* ino */
  CN_EV_READLINK,    /* ino */
  CN_EV_OPEN,        /* ino, a: open flags */
  CN_EV_READ,        /* ino, a: fh, b: offset, c: size */
  CN_EV_RELEASE,     /* ino, a: fh */
  CN_EV_OPENDIR,     /* ino */
  CN_EV_READDIR,     /* ino, a: fh, b: offset, c: size */
  CN_EV_READDIRPLUS, /* ino, a: fh, b: offset, c: size */
  CN_EV_RELEASEDIR,  /* ino, a: fh */
  CN_EV_GETXATTR,    /* ino, str: name, c: size (0 = size probe) */
  CN_EV_LISTXATTR,   /* ino, c: size (0 = size probe) */
  CN_EV_STATFS,      /* ino */
  CN_EV_ACCESS,      /* ino, a: mask */
};

/* Attributes cross from JavaScript as a Float64Array in this order (fuse3-binding.ts packs them). */
/* CN_ATTR_TIMEOUT: seconds the kernel may cache this node's attributes and name, or < 0 for the mount's. */
enum cn_attr_field {
  CN_ATTR_INO, CN_ATTR_MODE, CN_ATTR_NLINK, CN_ATTR_UID, CN_ATTR_GID, CN_ATTR_SIZE, CN_ATTR_BLOCKS,
  CN_ATTR_BLKSIZE, CN_ATTR_ATIME_MS, CN_ATTR_MTIME_MS, CN_ATTR_CTIME_MS, CN_ATTR_TIMEOUT, CN_ATTR_FIELDS
};

enum cn_statfs_field {
  CN_STATFS_BSIZE, CN_STATFS_FRSIZE, CN_STATFS_BLOCKS, CN_STATFS_BFREE, CN_STATFS_BAVAIL, CN_STATFS_FILES,
  CN_STATFS_FFREE, CN_STATFS_FAVAIL, CN_STATFS_NAMEMAX, CN_STATFS_FIELDS
};

/* ------------------------------------------------------------------------------------------------------ */
/* requests.c: the table of requests waiting for JavaScript. */

typedef struct cn_slot {
  fuse_req_t req;     /* NULL while the slot is free */
  uint32_t gen;       /* bumped on every reuse, so a stale id never matches */
  uint32_t next_free;
} cn_slot;

typedef struct cn_requests {
  pthread_mutex_t lock;
  pthread_cond_t quiet;  /* signalled when `replying` drops to 0 while closing */
  cn_slot *slots;
  uint32_t cap;
  uint32_t free_head;    /* 0 = none (slot 0 is never used, so id 0 is never valid) */
  uint32_t in_use;
  uint32_t replying;     /* answers taken out of the table and being written right now */
  bool closing;          /* set once at teardown: nothing is added or taken afterwards */
} cn_requests;

void cn_requests_init(cn_requests *t);
void cn_requests_destroy(cn_requests *t);
/* Records `req`; returns its id, or 0 when the table is closing or out of memory (answer it yourself). */
double cn_requests_add(cn_requests *t, fuse_req_t req);
/* Takes the request out for answering; NULL if it was answered already (or the session is over). Every
 * non-NULL result must be followed, after the fuse_reply_* call, by cn_requests_done. */
fuse_req_t cn_requests_take(cn_requests *t, double id);
void cn_requests_done(cn_requests *t);
bool cn_requests_alive(cn_requests *t, double id);
uint32_t cn_requests_pending(cn_requests *t);
/* Teardown: refuses every later add/take, waits for answers being written, and returns the requests still
 * waiting (the caller answers them). `*out` is malloc'd; free it. */
size_t cn_requests_close(cn_requests *t, fuse_req_t **out);

/* ------------------------------------------------------------------------------------------------------ */
/* reply_pool.c: threads that answer reads from a file range (fuse_reply_data reads or splices the file). */

typedef struct cn_pool_job {
  struct cn_pool_job *next;
  double id;
  int fd;
  off_t pos;
  size_t len;
} cn_pool_job;

typedef struct cn_pool {
  pthread_mutex_t lock;
  pthread_cond_t wake;
  cn_pool_job *head, *tail;
  pthread_t *threads;
  unsigned nthreads;
  bool stopping;
  struct cn_session *session;
} cn_pool;

void cn_pool_init(cn_pool *p, struct cn_session *s);
int cn_pool_start(cn_pool *p, unsigned nthreads);
/* Queues a reply; false if the pool has stopped (the request was answered already). */
bool cn_pool_push(cn_pool *p, double id, int fd, off_t pos, size_t len);
/* Joins the threads; jobs still queued are dropped (their requests were answered by the teardown). The lock
 * stays usable, so a late cn_pool_push is refused rather than racing; cn_pool_destroy frees it. */
void cn_pool_stop(cn_pool *p);
void cn_pool_destroy(cn_pool *p);

/* ------------------------------------------------------------------------------------------------------ */
/* session.c */

typedef struct cn_config {
  double attr_timeout, entry_timeout, negative_timeout;
  unsigned max_background, congestion_threshold;
  unsigned max_write;      /* largest read/write request: 1 MiB */
  unsigned max_readahead;  /* INIT can only lower the kernel's readahead; sysfs raises it after INIT */
  unsigned worker_threads; /* libfuse's max_threads: workers only dispatch, so few are needed */
  unsigned reply_threads;  /* the reply pool */
  bool splice;             /* FUSE_CAP_SPLICE_WRITE|MOVE: file-range replies splice instead of pread+write */
  bool want_forget;        /* hand FORGET to JavaScript */
} cn_config;

typedef struct cn_session {
  struct fuse_session *se; /* valid until the teardown destroys it; guarded by requests.closing */
  char *mountpoint;
  cn_config cfg;
  napi_threadsafe_function tsfn;
  cn_requests requests;
  cn_pool pool;
  pthread_t loop_thread;
  bool loop_started, loop_joined; /* JavaScript thread only */
  bool cleanup_hooked;            /* an env cleanup hook holds a reference (JavaScript thread only) */
  /* Ending the loop (cn_session_exit): guarded by requests.lock, except loop_returned which the waker reads. */
  _Atomic bool loop_returned;
  bool waker_started;
  pthread_t waker;
  int refs;                /* JavaScript thread only: the JS handle, the threadsafe function, the cleanup hook */
} cn_session;

/* A message queued to JavaScript. `str` points into the same allocation. */
typedef struct cn_msg {
  uint32_t event;
  double id;
  uint64_t ino;
  double a, b, c;
  char *str;
  double *pairs;           /* CN_EV_BATCH_FORGET */
  size_t npairs;
} cn_msg;

cn_msg *cn_msg_new(uint32_t event, const char *str);
/* Hands a message to JavaScript without blocking. */
void cn_post(cn_session *s, cn_msg *m);
/* Records the request and hands it to JavaScript; answers EIO itself if the session is closing. */
void cn_dispatch(fuse_req_t req, cn_msg *m);
void cn_session_unref(cn_session *s);
void *cn_loop_main(void *arg);
/* Ends a running session's loop; false if it was not running any more. Any thread. */
bool cn_session_exit(cn_session *s);
/* Installs the (empty) handler of the signal that wakes loop threads; 0 on success. */
int cn_wake_install(void);

/* ops.c */
extern const struct fuse_lowlevel_ops cn_ll_ops;

/* log.c: libfuse's messages, captured on the thread that asked for them (the loop thread while mounting). */
void cn_log_install(void);
void cn_log_capture_begin(char *buf, size_t size);
void cn_log_capture_end(void);

#endif
