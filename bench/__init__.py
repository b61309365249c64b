"""The side-by-side benchmarks. A package, so that its modules import as `bench.x` and none of them can
shadow an installed package of the same name (transformers imports a package named `kernels` whenever
one is importable). Run them from the repository root as `python -m bench.bench`, or as
`python bench/bench.py`: Python then puts bench/ itself first on sys.path, so each script's first lines
put the repository root there instead."""
