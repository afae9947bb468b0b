import sys

try:
    from bench.harness import main
except ImportError as exc:  # the peers and psutil come with the bench extra
    sys.exit(f"bench: {exc}; install the bench extra first: make bench (or pip install -e '.[dev,bench]')")

sys.exit(main())
