/*
 * The table of requests waiting for an answer from JavaScript.
 *
 * An id is (generation << 22) | slot, a number JavaScript holds exactly (< 2^53). Answering takes the request
 * out of the table under the lock, so of two answers racing for one request (JavaScript's, and the teardown's
 * EIO) exactly one gets it. The answer itself is written outside the lock (a file-range reply may wait on the
 * disk), so the table also counts answers in progress: the teardown sets `closing`, waits until none is in
 * progress, and only then answers the rest and lets the session be destroyed. After that no fuse_req_t is
 * ever touched again, and late answers from JavaScript find `closing` and are dropped.
 */
#include "cnaifs_fuse.h"
#include <stdlib.h>

#define SLOT_BITS 22
#define SLOT_LIMIT (1u << SLOT_BITS)
#define GEN_LIMIT (1u << 30)

void cn_requests_init(cn_requests *t) {
  pthread_mutex_init(&t->lock, NULL);
  pthread_cond_init(&t->quiet, NULL);
  t->slots = NULL;
  t->cap = 0;
  t->free_head = 0;
  t->in_use = 0;
  t->replying = 0;
  t->closing = false;
}

void cn_requests_destroy(cn_requests *t) {
  free(t->slots);
  t->slots = NULL;
  pthread_cond_destroy(&t->quiet);
  pthread_mutex_destroy(&t->lock);
}

/* Doubles the table; new slots go on the free list. Called with the lock held. */
static bool grow(cn_requests *t) {
  uint32_t cap = t->cap ? t->cap * 2 : 256;
  if (cap > SLOT_LIMIT) cap = SLOT_LIMIT;
  if (cap <= t->cap) return false;
  cn_slot *slots = realloc(t->slots, (size_t)cap * sizeof(cn_slot));
  if (!slots) return false;
  /* Slot 0 is never handed out: id 0 means "no request". */
  uint32_t first = t->cap ? t->cap : 1;
  if (!t->cap) slots[0] = (cn_slot){ NULL, 0, 0 };
  for (uint32_t i = first; i < cap; i++) {
    slots[i].req = NULL;
    slots[i].gen = 0;
    slots[i].next_free = i + 1 < cap ? i + 1 : t->free_head;
  }
  t->free_head = first;
  t->slots = slots;
  t->cap = cap;
  return true;
}

static double make_id(uint32_t index, uint32_t gen) {
  return (double)gen * (double)SLOT_LIMIT + (double)index;
}

/* The slot an id names, if it still holds that request. Called with the lock held. */
static cn_slot *find(cn_requests *t, double id) {
  if (!(id > 0) || id >= (double)GEN_LIMIT * SLOT_LIMIT) return NULL;
  uint64_t n = (uint64_t)id;
  uint32_t index = (uint32_t)(n & (SLOT_LIMIT - 1));
  uint32_t gen = (uint32_t)(n >> SLOT_BITS);
  if (index == 0 || index >= t->cap) return NULL;
  cn_slot *slot = &t->slots[index];
  if (slot->req == NULL || slot->gen != gen) return NULL;
  return slot;
}

double cn_requests_add(cn_requests *t, fuse_req_t req) {
  double id = 0;
  pthread_mutex_lock(&t->lock);
  if (!t->closing && (t->free_head != 0 || grow(t))) {
    uint32_t index = t->free_head;
    cn_slot *slot = &t->slots[index];
    t->free_head = slot->next_free;
    slot->gen = slot->gen + 1 < GEN_LIMIT ? slot->gen + 1 : 1;
    slot->req = req;
    t->in_use++;
    id = make_id(index, slot->gen);
  }
  pthread_mutex_unlock(&t->lock);
  return id;
}

/* Frees a slot. Called with the lock held. */
static void release_slot(cn_requests *t, cn_slot *slot) {
  slot->req = NULL;
  slot->next_free = t->free_head;
  t->free_head = (uint32_t)(slot - t->slots);
  t->in_use--;
}

fuse_req_t cn_requests_take(cn_requests *t, double id) {
  fuse_req_t req = NULL;
  pthread_mutex_lock(&t->lock);
  if (!t->closing) {
    cn_slot *slot = find(t, id);
    if (slot) {
      req = slot->req;
      release_slot(t, slot);
      t->replying++;
    }
  }
  pthread_mutex_unlock(&t->lock);
  return req;
}

void cn_requests_done(cn_requests *t) {
  pthread_mutex_lock(&t->lock);
  if (--t->replying == 0 && t->closing) pthread_cond_broadcast(&t->quiet);
  pthread_mutex_unlock(&t->lock);
}

bool cn_requests_alive(cn_requests *t, double id) {
  pthread_mutex_lock(&t->lock);
  bool alive = !t->closing && find(t, id) != NULL;
  pthread_mutex_unlock(&t->lock);
  return alive;
}

uint32_t cn_requests_pending(cn_requests *t) {
  pthread_mutex_lock(&t->lock);
  uint32_t n = t->in_use;
  pthread_mutex_unlock(&t->lock);
  return n;
}

size_t cn_requests_close(cn_requests *t, fuse_req_t **out) {
  size_t n = 0;
  pthread_mutex_lock(&t->lock);
  t->closing = true;
  while (t->replying > 0) pthread_cond_wait(&t->quiet, &t->lock);
  fuse_req_t *reqs = t->in_use ? malloc(t->in_use * sizeof(fuse_req_t)) : NULL;
  for (uint32_t i = 1; i < t->cap; i++) {
    if (t->slots[i].req == NULL) continue;
    /* Out of memory here would leave requests unanswered; libfuse could not answer them either, and the
     * kernel fails them when the device closes. */
    if (reqs) reqs[n++] = t->slots[i].req;
    release_slot(t, &t->slots[i]);
  }
  pthread_mutex_unlock(&t->lock);
  *out = reqs;
  return n;
}
