"""Drug-discovery chemistry: compound libraries (SMILES, CSV/TSV, SDF) read as streams, Morgan
fingerprints, RDKit-computed properties (ESOL solubility, rule-of-five descriptors), a synthetic
combinatorial library for demonstrations, and a ranked SDF hit-list writer. Needs RDKit."""
