/*
 * The reply pool: a few threads of ours that answer reads from a file range: each preads the range into its
 * own buffer and writes the reply, or (cfg.splice) has fuse_reply_data splice the file into the reply. A
 * read from a cold page cache blocks its thread on the disk; it never blocks the JavaScript thread, and the
 * other pool threads keep answering. Jobs are taken in the order they were queued.
 */
#define _GNU_SOURCE
#include "cnaifs_fuse.h"
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

/* Each pool thread's own buffer for copying replies: allocated once, so a reply costs no allocation and no
 * page faults (libfuse's copying path allocates and frees a buffer of the reply's size every time). */
typedef struct copy_buffer {
  char *data;
  size_t size;
} copy_buffer;

/* pread until `len` bytes or end of file; the count, or -errno. */
static ssize_t read_range(int fd, char *buf, size_t len, off_t pos) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, buf + done, len - done, pos + (off_t)done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) break;
    done += (size_t)n;
  }
  return (ssize_t)done;
}

static void answer_copy(cn_session *s, copy_buffer *cb, const cn_pool_job *job) {
  if (cb->size < job->len) {
    free(cb->data);
    cb->size = 0;
    cb->data = malloc(job->len);
    if (cb->data) cb->size = job->len;
  }
  /* Read first, take the request after: a teardown never waits on the disk (it answers EIO and this result
   * is dropped). The fd stays valid meanwhile: the kernel releases the handle only after this read. */
  ssize_t n = cb->data ? read_range(job->fd, cb->data, job->len, job->pos) : -ENOMEM;
  fuse_req_t req = cn_requests_take(&s->requests, job->id);
  if (!req) return; /* answered already (the session ended) */
  if (n < 0) fuse_reply_err(req, (int)-n);
  else fuse_reply_buf(req, cb->data, (size_t)n);
  cn_requests_done(&s->requests);
}

static void answer_splice(cn_session *s, const cn_pool_job *job) {
  fuse_req_t req = cn_requests_take(&s->requests, job->id);
  if (!req) return; /* answered already (the session ended) */
  struct fuse_bufvec bufv = FUSE_BUFVEC_INIT(job->len);
  bufv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK | FUSE_BUF_FD_RETRY;
  bufv.buf[0].fd = job->fd;
  bufv.buf[0].pos = job->pos;
  /* If reading the file fails, fuse_reply_data answers the request with that error itself. A file shorter
   * than the range makes a short read (FUSE_BUF_FD_RETRY stops only at end of file). */
  fuse_reply_data(req, &bufv, FUSE_BUF_SPLICE_MOVE);
  cn_requests_done(&s->requests);
}

static void *pool_main(void *arg) {
  cn_pool *p = arg;
  copy_buffer cb = { NULL, 0 };
  pthread_setname_np(pthread_self(), "cnaifs-reply");
  pthread_mutex_lock(&p->lock);
  for (;;) {
    while (!p->head && !p->stopping) pthread_cond_wait(&p->wake, &p->lock);
    if (p->stopping) break;
    cn_pool_job *job = p->head;
    p->head = job->next;
    if (!p->head) p->tail = NULL;
    pthread_mutex_unlock(&p->lock);
    if (p->session->cfg.splice) answer_splice(p->session, job);
    else answer_copy(p->session, &cb, job);
    free(job);
    pthread_mutex_lock(&p->lock);
  }
  pthread_mutex_unlock(&p->lock);
  free(cb.data);
  return NULL;
}

void cn_pool_init(cn_pool *p, cn_session *s) {
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->wake, NULL);
  p->head = p->tail = NULL;
  p->threads = NULL;
  p->nthreads = 0;
  /* Stopped until started: a reply queued before the pool runs (or after it stopped) is refused. */
  p->stopping = true;
  p->session = s;
}

int cn_pool_start(cn_pool *p, unsigned nthreads) {
  pthread_mutex_lock(&p->lock);
  p->stopping = false;
  pthread_mutex_unlock(&p->lock);
  p->threads = calloc(nthreads ? nthreads : 1, sizeof(pthread_t));
  if (!p->threads) return -1;
  for (unsigned i = 0; i < nthreads; i++) {
    if (pthread_create(&p->threads[i], NULL, pool_main, p) != 0) break;
    p->nthreads++;
  }
  return p->nthreads > 0 ? 0 : -1;
}

bool cn_pool_push(cn_pool *p, double id, int fd, off_t pos, size_t len) {
  cn_pool_job *job = malloc(sizeof(*job));
  if (!job) return false;
  *job = (cn_pool_job){ NULL, id, fd, pos, len };
  pthread_mutex_lock(&p->lock);
  bool queued = !p->stopping;
  if (queued) {
    if (p->tail) p->tail->next = job; else p->head = job;
    p->tail = job;
    pthread_cond_signal(&p->wake);
  }
  pthread_mutex_unlock(&p->lock);
  if (!queued) free(job);
  return queued;
}

void cn_pool_stop(cn_pool *p) {
  pthread_mutex_lock(&p->lock);
  p->stopping = true;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->lock);
  for (unsigned i = 0; i < p->nthreads; i++) pthread_join(p->threads[i], NULL);
  free(p->threads);
  p->threads = NULL;
  p->nthreads = 0;
  while (p->head) {
    cn_pool_job *job = p->head;
    p->head = job->next;
    free(job);
  }
  p->tail = NULL;
}

void cn_pool_destroy(cn_pool *p) {
  pthread_cond_destroy(&p->wake);
  pthread_mutex_destroy(&p->lock);
}
