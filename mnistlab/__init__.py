"""The ISLP MNIST lab as a small library shared by the DVC stages in ``stages/``.

Import the submodule you need: ``mnistlab.data`` and friends are cheap, ``mnistlab.system``
and ``mnistlab.training`` pull in Lightning and are imported by the training stages alone.
"""
