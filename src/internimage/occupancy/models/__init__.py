"""BEVFormer-Occ: image backbone + FPN, the BEVFormer encoder and the occupancy head."""
