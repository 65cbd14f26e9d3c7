#!/usr/bin/env node
// The mount(8) helper for filesystems of type fuse.cnaifs (`mount -t fuse.cnaifs REF MP -o …`, fstab lines).
// mount(8) runs /sbin/mount.fuse.cnaifs, a wrapper that scripts/install-mount-helper writes to run this file.
import('../dist/cli/mount-helper.js')
  .then((m) => m.helperMain(process.argv.slice(2)))
  .catch((err) => {
    process.stderr.write(`mount.fuse.cnaifs: ${err && err.message ? err.message : err}\n`)
    process.exit(1)
  })
