/*
 * The Node-API surface: mount() starts a session and returns its handle; the reply functions answer the
 * requests the session handed to JavaScript; exit() ends the session. src/fuse/fuse3-binding.ts is the only
 * caller and documents the contract from the JavaScript side.
 *
 * Every reply function returns true if it answered the request, false if the request was no longer waiting
 * (answered already, or the session ended): a late answer is dropped, never a crash.
 */
#define _GNU_SOURCE
#include "cnaifs_fuse.h"
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#define CHECK(env, call)                                                                                     \
  do {                                                                                                       \
    if ((call) != napi_ok) {                                                                                 \
      throw_last(env, #call);                                                                                \
      return NULL;                                                                                           \
    }                                                                                                        \
  } while (0)

static void throw_last(napi_env env, const char *what) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return;
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  char msg[256];
  snprintf(msg, sizeof msg, "cnaifs_fuse: %s failed: %s", what,
           info && info->error_message ? info->error_message : "unknown error");
  napi_throw_error(env, NULL, msg);
}

static napi_value make_bool(napi_env env, bool v) {
  napi_value out;
  napi_get_boolean(env, v, &out);
  return out;
}

static napi_value make_number(napi_env env, double v) {
  napi_value out;
  napi_create_double(env, v, &out);
  return out;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Reading arguments */

static bool get_session(napi_env env, napi_value v, cn_session **out) {
  void *data = NULL;
  if (napi_get_value_external(env, v, &data) != napi_ok || !data) {
    napi_throw_type_error(env, NULL, "cnaifs_fuse: not a session handle");
    return false;
  }
  *out = data;
  return true;
}

static bool get_double(napi_env env, napi_value v, double *out) {
  if (napi_get_value_double(env, v, out) != napi_ok) {
    napi_throw_type_error(env, NULL, "cnaifs_fuse: expected a number");
    return false;
  }
  return true;
}

/* A Float64Array of at least `min` elements. */
static bool get_f64(napi_env env, napi_value v, size_t min, double **out, size_t *length) {
  bool is_typed = false;
  napi_typedarray_type type;
  size_t n = 0;
  void *data = NULL;
  if (napi_is_typedarray(env, v, &is_typed) != napi_ok || !is_typed ||
      napi_get_typedarray_info(env, v, &type, &n, &data, NULL, NULL) != napi_ok || type != napi_float64_array ||
      n < min) {
    napi_throw_type_error(env, NULL, "cnaifs_fuse: expected a Float64Array");
    return false;
  }
  *out = data;
  if (length) *length = n;
  return true;
}

/* A string argument, malloc'd. */
static char *get_string(napi_env env, napi_value v) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "cnaifs_fuse: expected a string");
    return NULL;
  }
  char *s = malloc(len + 1);
  if (!s) {
    napi_throw_error(env, NULL, "cnaifs_fuse: out of memory");
    return NULL;
  }
  napi_get_value_string_utf8(env, v, s, len + 1, &len);
  return s;
}

static double prop_number(napi_env env, napi_value obj, const char *name, double fallback) {
  napi_value v;
  double d;
  if (napi_get_named_property(env, obj, name, &v) != napi_ok) return fallback;
  if (napi_get_value_double(env, v, &d) != napi_ok) return fallback;
  return d;
}

static bool prop_bool(napi_env env, napi_value obj, const char *name) {
  napi_value v;
  bool b = false;
  if (napi_get_named_property(env, obj, name, &v) != napi_ok) return false;
  if (napi_get_value_bool(env, v, &b) != napi_ok) return false;
  return b;
}

static void fill_stat(struct stat *st, const double *a) {
  memset(st, 0, sizeof(*st));
  st->st_ino = (ino_t)a[CN_ATTR_INO];
  st->st_mode = (mode_t)a[CN_ATTR_MODE];
  st->st_nlink = (nlink_t)a[CN_ATTR_NLINK];
  st->st_uid = (uid_t)a[CN_ATTR_UID];
  st->st_gid = (gid_t)a[CN_ATTR_GID];
  st->st_size = (off_t)a[CN_ATTR_SIZE];
  st->st_blocks = (blkcnt_t)a[CN_ATTR_BLOCKS];
  st->st_blksize = (blksize_t)a[CN_ATTR_BLKSIZE];
  const double ms[3] = { a[CN_ATTR_ATIME_MS], a[CN_ATTR_MTIME_MS], a[CN_ATTR_CTIME_MS] };
  struct timespec *ts[3] = { &st->st_atim, &st->st_mtim, &st->st_ctim };
  for (int i = 0; i < 3; i++) {
    double sec = ms[i] >= 0 ? (double)(int64_t)(ms[i] / 1000) : 0;
    ts[i]->tv_sec = (time_t)sec;
    ts[i]->tv_nsec = (long)((ms[i] - sec * 1000) * 1e6);
    if (ts[i]->tv_nsec < 0 || ts[i]->tv_nsec > 999999999) ts[i]->tv_nsec = 0;
  }
}

static void fill_entry(const cn_session *s, struct fuse_entry_param *e, const double *a) {
  memset(e, 0, sizeof(*e));
  e->ino = (fuse_ino_t)a[CN_ATTR_INO];
  e->generation = 0; /* inode numbers are never reused within a mount: the tree is immutable */
  fill_stat(&e->attr, a);
  bool own = a[CN_ATTR_TIMEOUT] >= 0;
  e->attr_timeout = own ? a[CN_ATTR_TIMEOUT] : s->cfg.attr_timeout;
  e->entry_timeout = own ? a[CN_ATTR_TIMEOUT] : s->cfg.entry_timeout;
}

/* The common start of a reply: (handle, id, ...) → the session, then the request taken out of the table. */
typedef struct reply_args {
  cn_session *s;
  double id;
  fuse_req_t req;
  napi_value argv[9];
  size_t argc;
} reply_args;

/* Reads (handle, id, ...); false with an exception pending on bad arguments. The caller validates the rest
 * of its arguments before reply_take, so a thrown exception never leaves a request taken and unanswered. */
static bool reply_begin(napi_env env, napi_callback_info info, reply_args *r, size_t want) {
  r->argc = 9;
  r->req = NULL;
  if (napi_get_cb_info(env, info, &r->argc, r->argv, NULL, NULL) != napi_ok) return false;
  if (r->argc < want) {
    napi_throw_type_error(env, NULL, "cnaifs_fuse: missing arguments");
    return false;
  }
  return get_session(env, r->argv[0], &r->s) && get_double(env, r->argv[1], &r->id);
}

/* Takes the request; r->req stays NULL when it is no longer waiting. */
static void reply_take(reply_args *r) {
  r->req = cn_requests_take(&r->s->requests, r->id);
}

static napi_value reply_end(napi_env env, reply_args *r) {
  if (!r->req) return make_bool(env, false);
  cn_requests_done(&r->s->requests);
  return make_bool(env, true);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Replies */

/* replyErr(handle, id, errno): errno 0 answers success for requests without data (release, access). */
static napi_value reply_err(napi_env env, napi_callback_info info) {
  reply_args r;
  double err;
  if (!reply_begin(env, info, &r, 3) || !get_double(env, r.argv[2], &err)) return NULL;
  reply_take(&r);
  if (r.req) fuse_reply_err(r.req, (int)err);
  return reply_end(env, &r);
}

/* replyEntry(handle, id, attr | null): null is a miss, cached as a negative entry when negativeTimeout > 0. */
static napi_value reply_entry(napi_env env, napi_callback_info info) {
  reply_args r;
  if (!reply_begin(env, info, &r, 3)) return NULL;
  napi_valuetype type;
  napi_typeof(env, r.argv[2], &type);
  double *a = NULL;
  if (type != napi_null && !get_f64(env, r.argv[2], CN_ATTR_FIELDS, &a, NULL)) return NULL;
  reply_take(&r);
  if (!r.req) return reply_end(env, &r);
  struct fuse_entry_param e;
  if (a) {
    fill_entry(r.s, &e, a);
    fuse_reply_entry(r.req, &e);
  } else if (r.s->cfg.negative_timeout > 0) {
    memset(&e, 0, sizeof e);
    e.ino = 0; /* a negative entry: the kernel remembers the miss for entry_timeout */
    e.entry_timeout = r.s->cfg.negative_timeout;
    fuse_reply_entry(r.req, &e);
  } else {
    fuse_reply_err(r.req, ENOENT);
  }
  return reply_end(env, &r);
}

/* replyAttr(handle, id, attr) */
static napi_value reply_attr(napi_env env, napi_callback_info info) {
  reply_args r;
  double *a;
  if (!reply_begin(env, info, &r, 3) || !get_f64(env, r.argv[2], CN_ATTR_FIELDS, &a, NULL)) return NULL;
  reply_take(&r);
  if (r.req) {
    struct stat st;
    fill_stat(&st, a);
    fuse_reply_attr(r.req, &st, a[CN_ATTR_TIMEOUT] >= 0 ? a[CN_ATTR_TIMEOUT] : r.s->cfg.attr_timeout);
  }
  return reply_end(env, &r);
}

/* replyOpen(handle, id, fh, isDirectory, flags): content never changes, so the kernel keeps its page cache
 * (and a directory's cached listing) across opens, and close needs no FLUSH. `flags` (optional) bit 1: do not
 * keep the page cache of earlier opens, bit 2: direct I/O (for a file whose content changes, the status
 * document). */
static napi_value reply_open(napi_env env, napi_callback_info info) {
  reply_args r;
  double fh;
  double flags = 0;
  bool dir = false;
  if (!reply_begin(env, info, &r, 4) || !get_double(env, r.argv[2], &fh)) return NULL;
  napi_get_value_bool(env, r.argv[3], &dir);
  if (r.argc > 4 && !get_double(env, r.argv[4], &flags)) return NULL;
  reply_take(&r);
  if (r.req) {
    struct fuse_file_info fi;
    memset(&fi, 0, sizeof fi);
    fi.fh = (uint64_t)fh;
    fi.keep_cache = ((int)flags & 1) ? 0 : 1;
    fi.direct_io = ((int)flags & 2) ? 1 : 0;
    if (dir) fi.cache_readdir = 1;
    else fi.noflush = 1;
    fuse_reply_open(r.req, &fi);
  }
  return reply_end(env, &r);
}

/* replyBuf(handle, id, buffer): read data, an xattr value or a packed xattr name list. */
static napi_value reply_buf(napi_env env, napi_callback_info info) {
  reply_args r;
  void *data = NULL;
  size_t len = 0;
  if (!reply_begin(env, info, &r, 3)) return NULL;
  if (napi_get_buffer_info(env, r.argv[2], &data, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "cnaifs_fuse: expected a Buffer");
    return NULL;
  }
  reply_take(&r);
  if (r.req) fuse_reply_buf(r.req, data, len);
  return reply_end(env, &r);
}

/* replyFile(handle, id, fd, position, length): answered by the reply pool; the fd must stay open until the
 * handle's release (the kernel releases only after every read on it was answered). */
static napi_value reply_file(napi_env env, napi_callback_info info) {
  reply_args r;
  double fd, pos, len;
  if (!reply_begin(env, info, &r, 5) || !get_double(env, r.argv[2], &fd) || !get_double(env, r.argv[3], &pos) ||
      !get_double(env, r.argv[4], &len))
    return NULL;
  if (fd < 0 || pos < 0 || len < 0) {
    napi_throw_range_error(env, NULL, "cnaifs_fuse: bad file range");
    return NULL;
  }
  if (len == 0) {
    reply_take(&r);
    if (r.req) fuse_reply_buf(r.req, NULL, 0);
    return reply_end(env, &r);
  }
  if (!cn_requests_alive(&r.s->requests, r.id)) return make_bool(env, false);
  if (cn_pool_push(&r.s->pool, r.id, (int)fd, (off_t)pos, (size_t)len)) return make_bool(env, true);
  /* Out of memory, or the pool stopped because the session ended (then the take below finds nothing). */
  reply_take(&r);
  if (r.req) fuse_reply_err(r.req, EIO);
  return reply_end(env, &r);
}

/* replyReadlink(handle, id, target) */
static napi_value reply_readlink(napi_env env, napi_callback_info info) {
  reply_args r;
  if (!reply_begin(env, info, &r, 3)) return NULL;
  char *target = get_string(env, r.argv[2]);
  if (!target) return NULL;
  reply_take(&r);
  if (r.req) fuse_reply_readlink(r.req, target);
  free(target);
  return reply_end(env, &r);
}

/* replyXattrSize(handle, id, size): the answer to a size probe (getxattr/listxattr with size 0). */
static napi_value reply_xattr_size(napi_env env, napi_callback_info info) {
  reply_args r;
  double size;
  if (!reply_begin(env, info, &r, 3) || !get_double(env, r.argv[2], &size)) return NULL;
  reply_take(&r);
  if (r.req) fuse_reply_xattr(r.req, (size_t)size);
  return reply_end(env, &r);
}

/* replyStatfs(handle, id, Float64Array of cn_statfs_field) */
static napi_value reply_statfs(napi_env env, napi_callback_info info) {
  reply_args r;
  double *a;
  if (!reply_begin(env, info, &r, 3) || !get_f64(env, r.argv[2], CN_STATFS_FIELDS, &a, NULL)) return NULL;
  reply_take(&r);
  if (r.req) {
    struct statvfs st;
    memset(&st, 0, sizeof st);
    st.f_bsize = (unsigned long)a[CN_STATFS_BSIZE];
    st.f_frsize = (unsigned long)a[CN_STATFS_FRSIZE];
    st.f_blocks = (fsblkcnt_t)a[CN_STATFS_BLOCKS];
    st.f_bfree = (fsblkcnt_t)a[CN_STATFS_BFREE];
    st.f_bavail = (fsblkcnt_t)a[CN_STATFS_BAVAIL];
    st.f_files = (fsfilcnt_t)a[CN_STATFS_FILES];
    st.f_ffree = (fsfilcnt_t)a[CN_STATFS_FFREE];
    st.f_favail = (fsfilcnt_t)a[CN_STATFS_FAVAIL];
    st.f_namemax = (unsigned long)a[CN_STATFS_NAMEMAX];
    fuse_reply_statfs(r.req, &st);
  }
  return reply_end(env, &r);
}

/*
 * replyDir(handle, id, plus, size, firstOffset, names, attrs, count) → entries packed, or -1 if dropped.
 * `names` holds `count` NUL-terminated names, `attrs` count × CN_ATTR_FIELDS values; entry i gets the offset
 * firstOffset + i + 1 (the kernel asks for the next page with it). Packs as many as fit in `size`.
 */
static napi_value reply_dir(napi_env env, napi_callback_info info) {
  reply_args r;
  bool plus = false;
  double size, first, count;
  void *names = NULL;
  size_t names_len = 0;
  double *attrs;
  size_t attrs_len;
  if (!reply_begin(env, info, &r, 8)) return NULL;
  napi_value *argv = r.argv;
  napi_get_value_bool(env, argv[2], &plus);
  if (!get_double(env, argv[3], &size) || !get_double(env, argv[4], &first) || !get_double(env, argv[7], &count))
    return NULL;
  if (napi_get_buffer_info(env, argv[5], &names, &names_len) != napi_ok) {
    napi_throw_type_error(env, NULL, "cnaifs_fuse: expected a Buffer of names");
    return NULL;
  }
  if (!get_f64(env, argv[6], 0, &attrs, &attrs_len)) return NULL;
  size_t n = (size_t)count;
  if (attrs_len < n * CN_ATTR_FIELDS) {
    napi_throw_range_error(env, NULL, "cnaifs_fuse: attrs too short");
    return NULL;
  }
  size_t cap = (size_t)size;
  char *buf = malloc(cap ? cap : 1);
  if (!buf) {
    napi_throw_error(env, NULL, "cnaifs_fuse: out of memory");
    return NULL;
  }
  reply_take(&r);
  if (!r.req) {
    free(buf);
    return make_number(env, -1);
  }
  size_t used = 0, packed = 0;
  const char *name = names, *end = (const char *)names + names_len;
  for (size_t i = 0; i < n && name < end; i++) {
    const double *a = attrs + i * CN_ATTR_FIELDS;
    off_t next = (off_t)first + (off_t)i + 1;
    size_t entsize;
    if (plus) {
      struct fuse_entry_param e;
      fill_entry(r.s, &e, a);
      entsize = fuse_add_direntry_plus(r.req, buf + used, cap - used, name, &e, next);
    } else {
      struct stat st;
      fill_stat(&st, a);
      entsize = fuse_add_direntry(r.req, buf + used, cap - used, name, &st, next);
    }
    if (entsize > cap - used) break;
    used += entsize;
    packed++;
    name += strlen(name) + 1;
  }
  fuse_reply_buf(r.req, buf, used);
  free(buf);
  cn_requests_done(&r.s->requests);
  return make_number(env, (double)packed);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Session control */

/* pending(handle) → requests waiting for JavaScript. */
static napi_value pending(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  cn_session *s;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || !get_session(env, argv[0], &s)) return NULL;
  return make_number(env, cn_requests_pending(&s->requests));
}

/*
 * exit(handle) → true if the session was still running. Ends the loop: see cn_session_exit (session.c).
 */
static napi_value session_exit(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  cn_session *s;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || !get_session(env, argv[0], &s)) return NULL;
  return make_bool(env, cn_session_exit(s));
}

/* Delivers a message to the JavaScript dispatcher. Runs on the JavaScript thread. */
static void call_js(napi_env env, napi_value js_cb, void *context, void *data) {
  cn_session *s = context;
  cn_msg *m = data;
  if (env == NULL || js_cb == NULL) {
    /* The function is being torn down without JavaScript (environment shutdown). */
    if (m->id) {
      fuse_req_t req = cn_requests_take(&s->requests, m->id);
      if (req) {
        fuse_reply_err(req, EIO);
        cn_requests_done(&s->requests);
      }
    }
    free(m->pairs);
    free(m);
    return;
  }
  /* Answered already (the session ended while this message was queued): JavaScript never sees it. */
  if (m->id && !cn_requests_alive(&s->requests, m->id)) {
    free(m->pairs);
    free(m);
    return;
  }
  napi_value argv[7], undefined;
  napi_get_undefined(env, &undefined);
  argv[0] = make_number(env, m->event);
  argv[1] = make_number(env, m->id);
  argv[2] = make_number(env, (double)m->ino);
  argv[3] = make_number(env, m->a);
  argv[4] = make_number(env, m->b);
  argv[5] = make_number(env, m->c);
  argv[6] = undefined;
  if (m->str) {
    napi_create_string_utf8(env, m->str, NAPI_AUTO_LENGTH, &argv[6]);
  } else if (m->pairs) {
    void *copy = NULL;
    napi_value ab;
    if (napi_create_arraybuffer(env, m->npairs * 2 * sizeof(double), &copy, &ab) == napi_ok) {
      memcpy(copy, m->pairs, m->npairs * 2 * sizeof(double));
      napi_create_typedarray(env, napi_float64_array, m->npairs * 2, ab, 0, &argv[6]);
    }
  }
  napi_status status = napi_call_function(env, undefined, js_cb, 7, argv, NULL);
  if (status != napi_ok && m->id) {
    /* The dispatcher threw (a bug in fuse3-binding.ts): answer, then let the exception surface. */
    fuse_req_t req = cn_requests_take(&s->requests, m->id);
    if (req) {
      fuse_reply_err(req, EIO);
      cn_requests_done(&s->requests);
    }
  }
  if (status == napi_pending_exception) {
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    napi_fatal_exception(env, exc);
  }
  free(m->pairs);
  free(m);
}

/* JavaScript thread only: waits for the loop thread once. */
static void join_loop(cn_session *s) {
  if (!s->loop_started || s->loop_joined) return;
  pthread_join(s->loop_thread, NULL);
  s->loop_joined = true;
}

/* Node tears the environment down (a worker thread ends, the process shuts down) while the session may still
 * run: end it and wait for the loop thread, which answers what is waiting and unmounts nothing else. */
static void env_cleanup(void *arg) {
  cn_session *s = arg;
  s->cleanup_hooked = false;
  cn_session_exit(s);
  join_loop(s);
  cn_session_unref(s);
}

static void tsfn_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  cn_session *s = data;
  /* The loop thread released the function as its last act; it is gone or about to return. */
  join_loop(s);
  if (s->cleanup_hooked) {
    s->cleanup_hooked = false;
    napi_remove_env_cleanup_hook(env, env_cleanup, s);
    cn_session_unref(s);
  }
  cn_session_unref(s);
}

static void external_finalize(napi_env env, void *data, void *hint) {
  (void)env; (void)hint;
  cn_session_unref(data);
}

/* Adds "-o" and an option to libfuse's argument list. */
static bool add_arg(struct fuse_args *args, const char *arg) {
  return fuse_opt_add_arg(args, arg) == 0;
}

/*
 * mount(mountpoint, options, config, onEvent) → handle.
 * `options` is the comma-separated -o string (already escaped by the caller); `config` carries cn_config's
 * fields; onEvent(event, id, ino, a, b, c, extra) receives every cn_event. Mounting happens on the new loop
 * thread; CN_EV_MOUNTED reports the outcome.
 */
static napi_value mount(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4) {
    napi_throw_type_error(env, NULL, "cnaifs_fuse: mount(mountpoint, options, config, onEvent)");
    return NULL;
  }
  char *mountpoint = get_string(env, argv[0]);
  if (!mountpoint) return NULL;
  char *options = get_string(env, argv[1]);
  if (!options) {
    free(mountpoint);
    return NULL;
  }

  cn_session *s = calloc(1, sizeof(*s));
  if (!s) {
    free(mountpoint);
    free(options);
    napi_throw_error(env, NULL, "cnaifs_fuse: out of memory");
    return NULL;
  }
  s->mountpoint = mountpoint;
  napi_value cfg = argv[2];
  s->cfg.attr_timeout = prop_number(env, cfg, "attrTimeoutS", 1);
  s->cfg.entry_timeout = prop_number(env, cfg, "entryTimeoutS", 1);
  s->cfg.negative_timeout = prop_number(env, cfg, "negativeTimeoutS", 0);
  s->cfg.max_background = (unsigned)prop_number(env, cfg, "maxBackground", 12);
  s->cfg.congestion_threshold = (unsigned)prop_number(env, cfg, "congestionThreshold", 9);
  s->cfg.max_write = (unsigned)prop_number(env, cfg, "maxWrite", 1 << 20);
  s->cfg.max_readahead = (unsigned)prop_number(env, cfg, "maxReadahead", 1 << 30);
  s->cfg.worker_threads = (unsigned)prop_number(env, cfg, "workerThreads", 4);
  s->cfg.reply_threads = (unsigned)prop_number(env, cfg, "replyThreads", 4);
  s->cfg.splice = prop_bool(env, cfg, "splice");
  s->cfg.want_forget = prop_bool(env, cfg, "wantForget");
  if (s->cfg.worker_threads < 1) s->cfg.worker_threads = 1;
  if (s->cfg.reply_threads < 1) s->cfg.reply_threads = 1;
  cn_requests_init(&s->requests);
  cn_pool_init(&s->pool, s);

  struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
  char err[1024];
  bool ok = add_arg(&args, "cnaifs") && add_arg(&args, "-o") && add_arg(&args, options);
  free(options);
  if (ok) {
    cn_log_capture_begin(err, sizeof err);
    s->se = fuse_session_new(&args, &cn_ll_ops, sizeof(cn_ll_ops), s);
    cn_log_capture_end();
  }
  fuse_opt_free_args(&args);
  if (!s->se) {
    size_t n = strlen(err);
    while (n > 0 && err[n - 1] == '\n') err[--n] = '\0';
    napi_throw_error(env, "EMOUNT", ok && err[0] ? err : "cnaifs_fuse: fuse_session_new failed");
    cn_requests_destroy(&s->requests);
    cn_pool_destroy(&s->pool);
    free(s->mountpoint);
    free(s);
    return NULL;
  }

  napi_value name, handle;
  napi_create_string_utf8(env, "cnaifs-fuse", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[3], NULL, name, 0, 1, s, tsfn_finalize, s, call_js, &s->tsfn) !=
      napi_ok) {
    fuse_session_destroy(s->se);
    cn_requests_destroy(&s->requests);
    cn_pool_destroy(&s->pool);
    free(s->mountpoint);
    free(s);
    throw_last(env, "napi_create_threadsafe_function");
    return NULL;
  }
  s->refs = 2; /* this handle, and the threadsafe function (dropped in tsfn_finalize) */
  if (napi_create_external(env, s, external_finalize, NULL, &handle) != napi_ok) {
    s->refs = 1;
    handle = NULL;
  }
  if (napi_add_env_cleanup_hook(env, env_cleanup, s) == napi_ok) {
    s->cleanup_hooked = true;
    s->refs++;
  }

  /* Our threads (and libfuse's, which inherit the mask) take no signals: Node handles them on its own. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int rc = pthread_create(&s->loop_thread, NULL, cn_loop_main, s);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  s->loop_started = rc == 0;
  if (rc != 0) {
    /* No loop thread: nothing was mounted. */
    fuse_session_destroy(s->se);
    s->se = NULL;
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_abort);
    napi_throw_error(env, "EMOUNT", "cnaifs_fuse: cannot start the FUSE loop thread");
    return NULL;
  }
  if (!handle) throw_last(env, "napi_create_external");
  return handle;
}

static napi_value version(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  char buf[64];
  snprintf(buf, sizeof buf, "libfuse %s", fuse_pkgversion());
  napi_create_string_utf8(env, buf, NAPI_AUTO_LENGTH, &out);
  return out;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Module */

static void set_number(napi_env env, napi_value obj, const char *name, double v) {
  napi_set_named_property(env, obj, name, make_number(env, v));
}

static napi_value init(napi_env env, napi_value exports) {
  cn_log_install();
  if (cn_wake_install() != 0) {
    napi_throw_error(env, NULL, "cnaifs_fuse: no free real-time signal to wake FUSE loop threads with");
    return NULL;
  }
  const napi_property_descriptor fns[] = {
    { "mount", NULL, mount, NULL, NULL, NULL, napi_default, NULL },
    { "exit", NULL, session_exit, NULL, NULL, NULL, napi_default, NULL },
    { "pending", NULL, pending, NULL, NULL, NULL, napi_default, NULL },
    { "replyErr", NULL, reply_err, NULL, NULL, NULL, napi_default, NULL },
    { "replyEntry", NULL, reply_entry, NULL, NULL, NULL, napi_default, NULL },
    { "replyAttr", NULL, reply_attr, NULL, NULL, NULL, napi_default, NULL },
    { "replyOpen", NULL, reply_open, NULL, NULL, NULL, napi_default, NULL },
    { "replyBuf", NULL, reply_buf, NULL, NULL, NULL, napi_default, NULL },
    { "replyFile", NULL, reply_file, NULL, NULL, NULL, napi_default, NULL },
    { "replyReadlink", NULL, reply_readlink, NULL, NULL, NULL, napi_default, NULL },
    { "replyXattrSize", NULL, reply_xattr_size, NULL, NULL, NULL, napi_default, NULL },
    { "replyStatfs", NULL, reply_statfs, NULL, NULL, NULL, napi_default, NULL },
    { "replyDir", NULL, reply_dir, NULL, NULL, NULL, napi_default, NULL },
    { "version", NULL, version, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns);

  napi_value ev;
  napi_create_object(env, &ev);
  set_number(env, ev, "MOUNTED", CN_EV_MOUNTED);
  set_number(env, ev, "INIT", CN_EV_INIT);
  set_number(env, ev, "ENDED", CN_EV_ENDED);
  set_number(env, ev, "FORGET", CN_EV_FORGET);
  set_number(env, ev, "BATCH_FORGET", CN_EV_BATCH_FORGET);
  set_number(env, ev, "LOOKUP", CN_EV_LOOKUP);
  set_number(env, ev, "GETATTR", CN_EV_GETATTR);
  set_number(env, ev, "READLINK", CN_EV_READLINK);
  set_number(env, ev, "OPEN", CN_EV_OPEN);
  set_number(env, ev, "READ", CN_EV_READ);
  set_number(env, ev, "RELEASE", CN_EV_RELEASE);
  set_number(env, ev, "OPENDIR", CN_EV_OPENDIR);
  set_number(env, ev, "READDIR", CN_EV_READDIR);
  set_number(env, ev, "READDIRPLUS", CN_EV_READDIRPLUS);
  set_number(env, ev, "RELEASEDIR", CN_EV_RELEASEDIR);
  set_number(env, ev, "GETXATTR", CN_EV_GETXATTR);
  set_number(env, ev, "LISTXATTR", CN_EV_LISTXATTR);
  set_number(env, ev, "STATFS", CN_EV_STATFS);
  set_number(env, ev, "ACCESS", CN_EV_ACCESS);
  napi_set_named_property(env, exports, "events", ev);

  napi_value layout;
  napi_create_object(env, &layout);
  set_number(env, layout, "attrFields", CN_ATTR_FIELDS);
  set_number(env, layout, "statfsFields", CN_STATFS_FIELDS);
  napi_set_named_property(env, exports, "layout", layout);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
