"""Genomics: VCF records to variant-scoring features, and scores back into an annotated VCF.

* ``vcf_header`` / ``variant_record``: the header and one data line, checked and parsed;
* ``vcf_reader``: streams VCF, bgzipped VCF and BCF, one result per line, malformed lines included;
* ``variant_features``: the fixed feature vector of one ALT allele (with ``strand_bias`` and the
  reference ``sequence_context``);
* ``annotated_vcf``: the input written again with each allele's score in an INFO field;
* ``synthetic_genome`` / ``synthetic_variants``: seeded demonstration data with the truth kept apart.

cyvcf2 and pyfaidx are imported only where a file is read or written.
"""
