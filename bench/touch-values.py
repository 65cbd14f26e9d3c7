#!/usr/bin/python3
"""Reads COUNT float32 values at seeded random positions of a .npy file, as a loader would.

    touch-values.py mmap|pread|numpy FILE COUNT SEED

mmap:  mmap the file and read each value through the mapping (page faults; what safetensors and llama.cpp do)
numpy: np.load(mmap_mode='r') and index the array (numpy memmap)
pread: os.pread of the same 4 bytes each
The positions depend only on COUNT, SEED and the file size, so the modes read the same values. Prints their sum.
"""
import mmap
import os
import random
import struct
import sys

mode, path, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
size = os.path.getsize(path)
HEADER = 128
n = (size - HEADER) // 4
rng = random.Random(seed)
indexes = [rng.randrange(n) for _ in range(count)]
total = 0.0
if mode == 'numpy':
    import numpy as np
    arr = np.load(path, mmap_mode='r')
    total = float(sum(float(arr[i]) for i in indexes))
else:
    fd = os.open(path, os.O_RDONLY)
    try:
        if mode == 'mmap':
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
                for i in indexes:
                    total += struct.unpack_from('<f', m, HEADER + 4 * i)[0]
        elif mode == 'pread':
            for i in indexes:
                total += struct.unpack('<f', os.pread(fd, 4, HEADER + 4 * i))[0]
        else:
            sys.exit(f'unknown mode {mode}')
    finally:
        os.close(fd)
print(total)
