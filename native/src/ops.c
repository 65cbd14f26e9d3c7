/*
 * libfuse's low-level operations, run on libfuse's worker threads. Each either answers at once (the mount is
 * read-only: everything that writes is EROFS; flush and fsync have nothing to do) or records the request and
 * hands it to JavaScript, returning without a reply.
 */
#define _GNU_SOURCE
#include "cnaifs_fuse.h"
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

static cn_session *session_of(fuse_req_t req) {
  return fuse_req_userdata(req);
}

static void send_request(fuse_req_t req, uint32_t event, fuse_ino_t ino, const char *name, double a, double b,
                         double c) {
  cn_msg *m = cn_msg_new(event, name);
  if (m) {
    m->ino = ino;
    m->a = a;
    m->b = b;
    m->c = c;
  }
  cn_dispatch(req, m);
}

static void op_init(void *userdata, struct fuse_conn_info *conn) {
  cn_session *s = userdata;
  /* libfuse sized max_write to its buffer (1 MiB); it also sets max_pages from it, which is what lets the
   * kernel send 1 MiB reads. */
  if (s->cfg.max_write && conn->max_write > s->cfg.max_write) conn->max_write = s->cfg.max_write;
  if (conn->max_readahead > s->cfg.max_readahead) conn->max_readahead = s->cfg.max_readahead;
  conn->max_background = s->cfg.max_background;
  conn->congestion_threshold = s->cfg.congestion_threshold;
  /* Content never changes under a mount: nothing for the kernel to invalidate on a changed mtime. */
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
  if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
  const unsigned splice = FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
  if (s->cfg.splice) conn->want |= conn->capable & splice;
  else conn->want &= ~splice;

  cn_msg *m = cn_msg_new(CN_EV_INIT, NULL);
  if (!m) return;
  m->ino = conn->want;
  m->a = conn->max_write;
  m->b = conn->max_readahead;
  m->c = conn->proto_minor;
  cn_post(s, m);
}

static void reply_rofs(fuse_req_t req) {
  fuse_reply_err(req, EROFS);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  send_request(req, CN_EV_LOOKUP, parent, name, 0, 0, 0);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  cn_session *s = session_of(req);
  if (s->cfg.want_forget) {
    cn_msg *m = cn_msg_new(CN_EV_FORGET, NULL);
    if (m) {
      m->ino = ino;
      m->a = (double)nlookup;
      cn_post(s, m);
    }
  }
  fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
  cn_session *s = session_of(req);
  if (s->cfg.want_forget && count > 0) {
    cn_msg *m = cn_msg_new(CN_EV_BATCH_FORGET, NULL);
    double *pairs = m ? malloc(count * 2 * sizeof(double)) : NULL;
    if (pairs) {
      for (size_t i = 0; i < count; i++) {
        pairs[2 * i] = (double)forgets[i].ino;
        pairs[2 * i + 1] = (double)forgets[i].nlookup;
      }
      m->pairs = pairs;
      m->npairs = count;
      cn_post(s, m);
    } else {
      free(m);
    }
  }
  fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  send_request(req, CN_EV_GETATTR, ino, NULL, 0, 0, 0);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
  (void)ino; (void)attr; (void)to_set; (void)fi;
  reply_rofs(req);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino) {
  send_request(req, CN_EV_READLINK, ino, NULL, 0, 0, 0);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev) {
  (void)parent; (void)name; (void)mode; (void)rdev;
  reply_rofs(req);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
  (void)parent; (void)name; (void)mode;
  reply_rofs(req);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
  (void)parent; (void)name;
  reply_rofs(req);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) {
  (void)parent; (void)name;
  reply_rofs(req);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name) {
  (void)link; (void)parent; (void)name;
  reply_rofs(req);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags) {
  (void)parent; (void)name; (void)newparent; (void)newname; (void)flags;
  reply_rofs(req);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname) {
  (void)ino; (void)newparent; (void)newname;
  reply_rofs(req);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & (O_TRUNC | O_CREAT))) {
    reply_rofs(req);
    return;
  }
  send_request(req, CN_EV_OPEN, ino, NULL, fi->flags, 0, 0);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  send_request(req, CN_EV_READ, ino, NULL, (double)fi->fh, (double)off, (double)size);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi) {
  (void)ino; (void)buf; (void)size; (void)off; (void)fi;
  reply_rofs(req);
}

/* Nothing is ever dirty on a read-only filesystem. */
static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)ino; (void)fi;
  fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
  (void)ino; (void)datasync; (void)fi;
  fuse_reply_err(req, 0);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  send_request(req, CN_EV_RELEASE, ino, NULL, (double)fi->fh, 0, 0);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  send_request(req, CN_EV_OPENDIR, ino, NULL, 0, 0, 0);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  send_request(req, CN_EV_READDIR, ino, NULL, (double)fi->fh, (double)off, (double)size);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  send_request(req, CN_EV_READDIRPLUS, ino, NULL, (double)fi->fh, (double)off, (double)size);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  send_request(req, CN_EV_RELEASEDIR, ino, NULL, (double)fi->fh, 0, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
  (void)ino; (void)datasync; (void)fi;
  fuse_reply_err(req, 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino) {
  send_request(req, CN_EV_STATFS, ino, NULL, 0, 0, 0);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size,
                        int flags) {
  (void)ino; (void)name; (void)value; (void)size; (void)flags;
  reply_rofs(req);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
  send_request(req, CN_EV_GETXATTR, ino, name, 0, 0, (double)size);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  send_request(req, CN_EV_LISTXATTR, ino, NULL, 0, 0, (double)size);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name) {
  (void)ino; (void)name;
  reply_rofs(req);
}

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask) {
  if (mask & W_OK) {
    reply_rofs(req);
    return;
  }
  send_request(req, CN_EV_ACCESS, ino, NULL, mask, 0, 0);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi) {
  (void)parent; (void)name; (void)mode; (void)fi;
  reply_rofs(req);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                         struct fuse_file_info *fi) {
  (void)ino; (void)mode; (void)offset; (void)length; (void)fi;
  reply_rofs(req);
}

static void op_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in, struct fuse_file_info *fi_in,
                               fuse_ino_t ino_out, off_t off_out, struct fuse_file_info *fi_out, size_t len,
                               int flags) {
  (void)ino_in; (void)off_in; (void)fi_in; (void)ino_out; (void)off_out; (void)fi_out; (void)len; (void)flags;
  reply_rofs(req);
}

/* Left out on purpose: locks (the kernel then keeps them locally), ioctl, poll, bmap, lseek (the kernel's
 * generic seek is right for files that never change), write_buf (write covers it). */
const struct fuse_lowlevel_ops cn_ll_ops = {
  .init = op_init,
  .lookup = op_lookup,
  .forget = op_forget,
  .forget_multi = op_forget_multi,
  .getattr = op_getattr,
  .setattr = op_setattr,
  .readlink = op_readlink,
  .mknod = op_mknod,
  .mkdir = op_mkdir,
  .unlink = op_unlink,
  .rmdir = op_rmdir,
  .symlink = op_symlink,
  .rename = op_rename,
  .link = op_link,
  .open = op_open,
  .read = op_read,
  .write = op_write,
  .flush = op_flush,
  .release = op_release,
  .fsync = op_fsync,
  .opendir = op_opendir,
  .readdir = op_readdir,
  .readdirplus = op_readdirplus,
  .releasedir = op_releasedir,
  .fsyncdir = op_fsyncdir,
  .statfs = op_statfs,
  .setxattr = op_setxattr,
  .getxattr = op_getxattr,
  .listxattr = op_listxattr,
  .removexattr = op_removexattr,
  .access = op_access,
  .create = op_create,
  .fallocate = op_fallocate,
  .copy_file_range = op_copy_file_range,
};
