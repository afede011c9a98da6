"""An input CSV for timing ``graph-mtl predict``: the embedded dataset's NCI SMILES, cycled and each written as an
RDKit random SMILES (the same molecule with another atom order), so no two rows are the same string.

Run ``python benchmarks/predict_input.py --help``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from rdkit import Chem, rdBase

from graph_mtl.data.molecules import SMILES_FILE, read_smiles_file


def random_smiles(count: int) -> list[str]:
    """``count`` random SMILES of the parseable NCI molecules, in file order, cycled; row ``i`` is drawn with
    seed ``i``, so the file is the same every time."""
    molecules = []
    with rdBase.BlockLogs():
        for _, smiles, _ in read_smiles_file(SMILES_FILE):
            mol = Chem.MolFromSmiles(smiles)
            if mol is not None:
                molecules.append(mol)
    return [Chem.MolToRandomSmilesVect(molecules[i % len(molecules)], 1, randomSeed=i)[0] for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="rows (default: 10000)")
    parser.add_argument("--out", default="predict_10k.csv", help="CSV to write (default: predict_10k.csv)")
    args = parser.parse_args()
    with Path(args.out).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["smiles"])
        writer.writerows([s] for s in random_smiles(args.count))
    print(f"{args.count} SMILES written to {args.out}")


if __name__ == "__main__":
    main()
