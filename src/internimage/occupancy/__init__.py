"""3D occupancy prediction for driving: BEVFormer-Occ on InternImage (Occ3D-nuScenes)."""
