"""dser-spark: DSER batch recommender on Apache Spark."""
from setuptools import find_packages, setup

setup(
    name="dser-spark",
    version="0.1.0",
    description="Doc2Vec sequence embeddings + GMF/MLP recommender, batch top-K on Spark",
    python_requires=">=3.11",
    packages=find_packages(include=["dser_spark", "dser_spark.*"]),
    package_data={"dser_spark": ["log4j2.properties", "py.typed"]},
    install_requires=[
        "pyspark==4.3.0",
        "gensim==4.4.0",
        "torch==2.13.0",
        "pandas>=2.3,<2.4",
        "numpy>=1.26,<3",
        "pyarrow>=15",
        "pyyaml>=6",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "matplotlib>=3.8",
        # serving (dser_spark/serving): duckdb loads the published Parquet; streamlit is the dashboard
        # (`dser-spark dashboard`); fastapi on uvicorn the read-only API (`dser-spark serve`), with uvicorn's
        # standard extra (httptools, uvloop) for its request throughput
        "duckdb>=1.0",
        "streamlit==1.67.0",
        "fastapi==0.165.0",
        "uvicorn[standard]==0.55.0",
    ],
    extras_require={
        # pytest: the test runner; playwright drives Debian's chromium in the dashboard's browser test
        # (tests/test_browser.py; its own browser download is not used); httpx: FastAPI's TestClient
        "test": ["pytest>=8", "playwright==1.65.2", "httpx==0.29.0"],
    },
    entry_points={"console_scripts": ["dser-spark=dser_spark.cli:main"]},
)
