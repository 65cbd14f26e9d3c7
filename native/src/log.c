/*
 * libfuse reports problems through fuse_log (e.g. "fuse: bad mount point `/x': No such file or directory").
 * While the loop thread mounts, it captures those lines so the mount error JavaScript sees names the cause;
 * everything else goes to stderr as libfuse would print it.
 */
#include "cnaifs_fuse.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct capture {
  char *buf;
  size_t size;
  size_t used;
} capture;

static __thread capture *current;
static __thread capture storage;

static void log_func(enum fuse_log_level level, const char *fmt, va_list ap) {
  (void)level;
  capture *c = current;
  if (!c) {
    vfprintf(stderr, fmt, ap);
    return;
  }
  if (c->used + 1 >= c->size) return;
  int n = vsnprintf(c->buf + c->used, c->size - c->used, fmt, ap);
  if (n < 0) return;
  c->used += (size_t)n < c->size - c->used ? (size_t)n : c->size - c->used - 1;
}

void cn_log_install(void) {
  fuse_set_log_func(log_func);
}

void cn_log_capture_begin(char *buf, size_t size) {
  storage = (capture){ buf, size, 0 };
  if (size) buf[0] = '\0';
  current = &storage;
}

void cn_log_capture_end(void) {
  current = NULL;
}
