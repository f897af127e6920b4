"""The ISLP MNIST lab as a small library shared by the DVC stages in ``stages/``.

Import the submodule you need: ``mnistlab.data`` and friends are cheap, ``mnistlab.system``
and ``mnistlab.training`` pull in Lightning and are imported by the training stages alone.
Importing the package pins MKL's arithmetic first (``mnistlab.machine``), so that every stage,
test and benchmark computes the same bits at any thread count; and it lets the process end without
the garbage collector's last passes over torch's objects (below).
"""

import atexit
import gc

from mnistlab.machine import pin_cpu_arithmetic

pin_cpu_arithmetic()

# As a process ends, CPython's collector walks every object still alive, more than once. After torch has been imported
# that is millions of them (torch._dynamo's and sympy's among them, which any torch optimizer imports): about 1.3 s of
# CPU after `import torch` and 2.5 s after Lightning, spent once the stage has written its results. Registered at the
# package's first import, this runs last of the exit handlers, and the collections after it skip every object frozen
# here. What they would have done is call the finalizers of objects caught in reference cycles: this project's files
# are closed where they are written (with-blocks, write_text, torch.save), and the OS reclaims the memory anyway.
atexit.register(gc.freeze)
