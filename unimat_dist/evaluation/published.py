"""Published proxy-metric numbers the reports compare against (percentages as printed in the papers).

CDVAE: Xie et al., "Crystal Diffusion Variational Autoencoder for Periodic Material Generation",
ICLR 2022, generation table (validity, COV, property statistics). UniMat: Yang et al., "Scalable
Diffusion for Materials Generation", arXiv 2311.09235, Table 1, in the same column order (struct/comp
validity, COV-R/P, EMD of density, of formation energy, of #elements), as quoted in this project's
results-table issue. Values were transcribed by hand: check them against the papers before citing.
"""
from __future__ import annotations

# metric -> value; struct/comp validity and COV in %, EMDs raw (density g/cm^3, #elements, property eV/atom)
PUBLISHED = {
    "perovskite": {
        "CDVAE (Xie et al. 2022)": {"struct_validity": 100.0, "comp_validity": 98.59, "cov_recall": 99.45,
                                    "cov_precision": 98.46, "emd_density": 0.1258, "emd_property": 0.0264,
                                    "emd_num_elements": 0.0628},
        "UniMat (Yang et al. 2023)": {"struct_validity": 100.0, "comp_validity": 98.8, "cov_recall": 99.2,
                                      "cov_precision": 98.2, "emd_density": 0.076, "emd_property": 0.022,
                                      "emd_num_elements": 0.025},
    },
    "carbon": {
        "CDVAE (Xie et al. 2022)": {"struct_validity": 100.0, "comp_validity": None, "cov_recall": 99.80,
                                    "cov_precision": 83.08, "emd_density": 0.1407, "emd_property": 0.2850,
                                    "emd_num_elements": None},
        "UniMat (Yang et al. 2023)": {"struct_validity": 100.0, "comp_validity": None, "cov_recall": 100.0,
                                      "cov_precision": 96.5, "emd_density": 0.013, "emd_property": 0.207,
                                      "emd_num_elements": None},
    },
    "mp20": {
        "CDVAE (Xie et al. 2022)": {"struct_validity": 100.0, "comp_validity": 86.70, "cov_recall": 99.15,
                                    "cov_precision": 99.49, "emd_density": 0.6875, "emd_property": 0.2778,
                                    "emd_num_elements": 1.432},
        "UniMat (Yang et al. 2023)": {"struct_validity": 97.2, "comp_validity": 89.4, "cov_recall": 99.8,
                                      "cov_precision": 99.7, "emd_density": 0.088, "emd_property": 0.034,
                                      "emd_num_elements": 0.056},
    },
}

PERCENT_METRICS = ("struct_validity", "comp_validity", "cov_recall", "cov_precision")
