"""The ISLP MNIST lab as a small library shared by the DVC stages in ``stages/``.

Import the submodule you need: ``mnistlab.data`` and friends are cheap, ``mnistlab.system``
and ``mnistlab.training`` pull in Lightning and are imported by the training stages alone.
Importing the package pins MKL's arithmetic first (``mnistlab.machine``), so that every stage,
test and benchmark computes the same bits at any thread count.
"""

from mnistlab.machine import pin_cpu_arithmetic

pin_cpu_arithmetic()
