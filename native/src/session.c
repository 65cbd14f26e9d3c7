/*
 * A session's life on its loop thread: mount, serve (fuse_session_loop_mt), tear down. Also the two ways a
 * message reaches JavaScript (cn_post, cn_dispatch).
 *
 * Teardown order matters:
 *   1. close the request table (waits for answers being written), answer what is left with EIO;
 *   2. stop the reply pool (its threads use the session's splice pipes, freed with the session);
 *   3. fuse_session_destroy: closes /dev/fuse, which makes the kernel abort the connection, so files still
 *      open on a lazily unmounted mount fail with ENOTCONN instead of waiting for a daemon that is gone;
 *   4. tell JavaScript (CN_EV_ENDED) and release the threadsafe function: its finalizer drops the loop's
 *      reference to the session.
 */
#define _GNU_SOURCE
#include "cnaifs_fuse.h"
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

cn_msg *cn_msg_new(uint32_t event, const char *str) {
  size_t len = str ? strlen(str) + 1 : 0;
  cn_msg *m = malloc(sizeof(cn_msg) + len);
  if (!m) return NULL;
  memset(m, 0, sizeof(*m));
  m->event = event;
  if (str) {
    m->str = (char *)(m + 1);
    memcpy(m->str, str, len);
  }
  return m;
}

static void answer_eio(cn_session *s, double id) {
  fuse_req_t req = cn_requests_take(&s->requests, id);
  if (!req) return;
  fuse_reply_err(req, EIO);
  cn_requests_done(&s->requests);
}

void cn_post(cn_session *s, cn_msg *m) {
  if (napi_call_threadsafe_function(s->tsfn, m, napi_tsfn_nonblocking) != napi_ok) {
    /* Only possible once the function is closing, which the loop thread does after the workers stopped. */
    if (m->id) answer_eio(s, m->id);
    free(m);
  }
}

void cn_dispatch(fuse_req_t req, cn_msg *m) {
  cn_session *s = fuse_req_userdata(req);
  double id = m ? cn_requests_add(&s->requests, req) : 0;
  if (!id) {
    fuse_reply_err(req, m ? EIO : ENOMEM);
    free(m);
    return;
  }
  m->id = id;
  cn_post(s, m);
}

/* Runs on the JavaScript thread (from the external's and the threadsafe function's finalizers). */
void cn_session_unref(cn_session *s) {
  if (--s->refs > 0) return;
  cn_requests_destroy(&s->requests);
  cn_pool_destroy(&s->pool);
  free(s->mountpoint);
  free(s);
}

static void post_simple(cn_session *s, uint32_t event, const char *str, double a) {
  cn_msg *m = cn_msg_new(event, str);
  if (!m) return;
  m->a = a;
  cn_post(s, m);
}

static void strip_newlines(char *s) {
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' ')) s[--n] = '\0';
  for (char *p = s; *p; p++) if (*p == '\n') *p = ';';
}

/* ------------------------------------------------------------------------------------------------------ */
/* Ending the loop
 *
 * fuse_session_exit only sets a flag. fuse_session_loop_mt's own thread (our loop thread) sleeps in
 * sem_wait until a worker leaves, and the workers sleep in read() on /dev/fuse until the kernel has a
 * request, which it may never have again while files stay open on a detached mount. libfuse expects a signal
 * to interrupt that sem_wait (its own handlers call fuse_session_exit). We send one to our loop thread only,
 * a real-time signal with an empty handler; the loop then sees the flag, cancels the workers (they are
 * cancellable inside read()) and returns. A signal landing between the loop's check of the flag and its
 * sem_wait would be lost, so a waker thread repeats it until the loop has returned. */

static int wake_signal;

static void on_wake(int sig) {
  (void)sig; /* only interrupts sem_wait */
}

int cn_wake_install(void) {
  if (wake_signal) return 0;
  /* The highest real-time signal nobody handles yet (Node and libuv use none of them). */
  for (int sig = SIGRTMAX - 2; sig >= SIGRTMIN; sig--) {
    struct sigaction old;
    if (sigaction(sig, NULL, &old) != 0 || old.sa_handler != SIG_DFL || (old.sa_flags & SA_SIGINFO)) continue;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_wake;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: sem_wait must return */
    if (sigaction(sig, &sa, NULL) != 0) continue;
    wake_signal = sig;
    return 0;
  }
  return -1;
}

static void *waker_main(void *arg) {
  cn_session *s = arg;
  pthread_setname_np(pthread_self(), "cnaifs-wake");
  const struct timespec pause = { 0, 10 * 1000 * 1000 };
  while (!atomic_load(&s->loop_returned)) {
    pthread_kill(s->loop_thread, wake_signal);
    nanosleep(&pause, NULL);
  }
  return NULL;
}

bool cn_session_exit(cn_session *s) {
  bool running = false;
  /* The table's lock orders this against the teardown: once `closing` is set the session may be destroyed. */
  pthread_mutex_lock(&s->requests.lock);
  if (!s->requests.closing && s->se && !atomic_load(&s->loop_returned)) {
    running = true;
    fuse_session_exit(s->se);
    if (!s->waker_started) {
      sigset_t all, old;
      sigfillset(&all);
      pthread_sigmask(SIG_BLOCK, &all, &old);
      s->waker_started = pthread_create(&s->waker, NULL, waker_main, s) == 0;
      pthread_sigmask(SIG_SETMASK, &old, NULL);
      if (!s->waker_started) pthread_kill(s->loop_thread, wake_signal);
    }
  }
  pthread_mutex_unlock(&s->requests.lock);
  return running;
}

/* After fuse_session_loop_mt returned: no more wake-ups, and the waker (if any) is gone. */
static void loop_returned(cn_session *s) {
  sigset_t wake;
  sigemptyset(&wake);
  sigaddset(&wake, wake_signal);
  pthread_sigmask(SIG_BLOCK, &wake, NULL); /* a late signal stays pending instead of interrupting teardown */
  pthread_mutex_lock(&s->requests.lock);
  atomic_store(&s->loop_returned, true);
  bool waker = s->waker_started;
  pthread_mutex_unlock(&s->requests.lock);
  if (waker) pthread_join(s->waker, NULL);
}

/* ------------------------------------------------------------------------------------------------------ */

void *cn_loop_main(void *arg) {
  cn_session *s = arg;
  int rc = 0;
  fuse_req_t *left;
  size_t n;
  struct fuse_loop_config *config;

  /* Named so a stuck thread is easy to spot (libfuse's workers inherit the name); created with every signal
   * blocked, only the wake signal gets through (the workers inherit that too). */
  pthread_setname_np(pthread_self(), "cnaifs-fuse");
  sigset_t wake;
  sigemptyset(&wake);
  sigaddset(&wake, wake_signal);
  pthread_sigmask(SIG_UNBLOCK, &wake, NULL);

  char err[1024];
  cn_log_capture_begin(err, sizeof err);
  int mounted = fuse_session_mount(s->se, s->mountpoint);
  cn_log_capture_end();
  if (mounted != 0) {
    strip_newlines(err);
    post_simple(s, CN_EV_MOUNTED, err[0] ? err : "fuse_session_mount failed", 0);
    rc = -EIO;
    goto teardown;
  }
  if (cn_pool_start(&s->pool, s->cfg.reply_threads) != 0) {
    fuse_session_unmount(s->se);
    post_simple(s, CN_EV_MOUNTED, "cannot start the reply threads", 0);
    rc = -EAGAIN;
    goto teardown;
  }
  post_simple(s, CN_EV_MOUNTED, NULL, 0);

  config = fuse_loop_cfg_create();
  if (!config) {
    rc = -ENOMEM;
  } else {
    /* Workers only read a request and queue it (or answer it at once), so a few keep up with any load; the
     * waiting happens in the request table, not on threads. */
    fuse_loop_cfg_set_max_threads(config, s->cfg.worker_threads);
    rc = fuse_session_loop_mt(s->se, config);
    fuse_loop_cfg_destroy(config);
  }

teardown:
  loop_returned(s);
  left = NULL;
  n = cn_requests_close(&s->requests, &left);
  for (size_t i = 0; i < n; i++) fuse_reply_err(left[i], EIO);
  free(left);
  cn_pool_stop(&s->pool);
  /* Not fuse_session_unmount: the mount is gone already (the kernel ended the session, or JavaScript
   * detached it before ending it), and unmounting the path again could hit whatever is mounted there now. */
  fuse_session_destroy(s->se);
  s->se = NULL;
  post_simple(s, CN_EV_ENDED, NULL, rc);
  napi_release_threadsafe_function(s->tsfn, napi_tsfn_release);
  return NULL;
}
