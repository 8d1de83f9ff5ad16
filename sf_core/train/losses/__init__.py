"""Training losses: distribution matching (DMD, SiD, GAN) on self-rollouts, the critic's flow loss, ODE
regression, and the teacher-forcing / diffusion-forcing flow-matching baselines."""
