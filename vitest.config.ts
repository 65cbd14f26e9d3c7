import { defineConfig } from 'vitest/config'

// Two projects: `unit` needs no registry (real files, processes and FUSE where a test says so, nothing on the
// network), `e2e` runs the real CLI against the registries the global setup starts. `npm test` runs both;
// `npm run test:unit` the unit project alone (`vitest run --project unit`).
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
      { extends: true, test: { name: 'e2e', include: ['test/e2e/**/*.test.ts'], globalSetup: ['test/helpers/global-setup.ts'] } },
    ],
  },
})
