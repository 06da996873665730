"""The data wing: CIFAR-10 from torchvision, a folder or an archive (`sources`, `imagefiles`), held
as `dataset.Cifar10`; the train / validation / test split (`splits`); and batches made on the
training device (`loader.DeviceLoader`, with `augmentation` and torchvision `transforms` applied
there)."""
