import { defineConfig } from 'vitest/config'

// Projects: `unit` needs no registry (real files, processes and FUSE where a test says so, nothing on the
// network); `e2e` runs the real CLI against the registries the global setup starts, its mounts served by the
// libfuse 3 addon; `e2e-fuse-native` runs the suites that mount again with the fuse-native fallback forced
// (CNAIFS_FUSE reaches every daemon the CLI starts). `npm test` runs them all; `npm run test:unit` the unit
// project alone (`vitest run --project unit`).
const MOUNT_SUITES = [
  'test/e2e/mount.test.ts', 'test/e2e/data-path-mount.test.ts', 'test/e2e/compressed.test.ts', 'test/e2e/operations.test.ts',
  'test/e2e/daemon-operations.test.ts', 'test/e2e/unprivileged.test.ts',
]
export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // FUSE mounts and registry processes are shared machine resources: at most two files at a time.
    fileParallelism: true,
    maxWorkers: 2,
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      { extends: true, test: { name: 'e2e', include: ['test/e2e/**/*.test.ts'], globalSetup: ['test/helpers/global-setup.ts'], env: { CNAIFS_FUSE: 'fuse3' } } },
      { extends: true, test: { name: 'e2e-fuse-native', include: MOUNT_SUITES, globalSetup: ['test/helpers/global-setup.ts'], env: { CNAIFS_FUSE: 'fuse-native' } } },
    ],
  },
})
