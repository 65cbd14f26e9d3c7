{
  "targets": [
    {
      "target_name": "cnaifs_fuse",
      "sources": [
        "src/addon.c",
        "src/session.c",
        "src/ops.c",
        "src/requests.c",
        "src/reply_pool.c",
        "src/log.c"
      ],
      "defines": ["NAPI_VERSION=8"],
      "cflags_c": ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-O2", "<!@(pkg-config --cflags fuse3)"],
      "libraries": ["<!@(pkg-config --libs fuse3)"]
    }
  ]
}
