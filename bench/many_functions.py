"""Write an x86-64 assembly file with N tiny functions, for attach and detach benchmarks.

Each function is `push %rbp; pop %rbp; ret` with a proper symbol type and size, so bpfcov
indexes it like compiled code; assembling is fast even for 100,000 of them, where a C
compiler would take minutes.

    python bench/many_functions.py 100000 out.s && gcc -o many out.s
"""

from __future__ import annotations

import sys


def write(count: int, out) -> None:
    out.write(".text\n")
    for i in range(count):
        out.write(f".globl fn_{i}\n.type fn_{i}, @function\nfn_{i}:\n    push %rbp\n    pop %rbp\n    ret\n"
                  f".size fn_{i}, .-fn_{i}\n")
    out.write(".globl main\n.type main, @function\nmain:\n    xor %eax, %eax\n    ret\n.size main, .-main\n")
    out.write('.section .note.GNU-stack,"",@progbits\n')


if __name__ == "__main__":
    with open(sys.argv[2], "w") as f:
        write(int(sys.argv[1]), f)
