import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // FUSE mounts and registry processes are shared machine resources: keep files in one worker at a time
    // where they mount, but let pure unit files run alongside.
    fileParallelism: true,
    maxWorkers: 2,
  },
})
