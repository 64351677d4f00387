"""The RL stage's own parts: GRPO maths, which groups a step trains on, the packed rollout batch, the prompt
DataModule, one RL step (`mimovl.rl.step.rl_step`) and the callback that runs it."""
