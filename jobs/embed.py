"""spark-submit entry point: the embed stage (arguments as for `dser-spark embed`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without install

from dser_spark.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
