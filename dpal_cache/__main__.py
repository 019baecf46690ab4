"""``python -m dpal_cache ...``: the ``dpal-cache`` command without installing the package (the working tree on
PYTHONPATH), as pipelines/bench_gpu.sh runs it on a machine whose torch is already installed."""

from dpal_cache.cli import main

if __name__ == "__main__":
    main()
