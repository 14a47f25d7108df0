"""Demonstration code, apart from the product: the example model builders, the synthetic data
generators (DICOM studies, ECG, VCF, compound libraries, hospital series) and the ward simulator.

Nothing in the product imports this package, except the CLI commands that run it
(``medserve examples ...``, ``medserve simulate ward``). The models it builds are demonstrations
trained on synthetic data; none has seen a real patient.
"""
