from setuptools import find_packages, setup

setup(
    name="floater-fairseq",
    version="0.1.0",
    description="FLOATER (Neural-ODE position encoding) and other position encoders as a fairseq plugin",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["floater_fairseq", "floater_fairseq.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        # fairseq 0.12.2 does not import on Python 3.11; fairseq-fixed is the same package.
        "fairseq-fixed==0.12.3.1",
        "torchdiffeq>=0.2.3",
        "sacrebleu>=2.0",
        "sentencepiece",
        "matplotlib",
        "numpy",
    ],
    extras_require={"test": ["pytest", "pytest-xdist", "hypothesis"]},
    # thin entry points over floater_fairseq.cli (also: python -m floater_fairseq.cli.NAME)
    entry_points={"console_scripts": [
        f"floater-{name.replace('_', '-')}=floater_fairseq.cli.{name}:main"
        for name in ("prepare", "experiment", "analyze_positions", "analyze_trajectories", "migrate",
                     "average_checkpoints", "demo", "length_buckets", "synthetic")
    ]},
)
