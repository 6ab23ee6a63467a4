"""Every number the paper states, each once, with the section it comes from.

Wu et al., "Deep Image: Scaling up Image Recognition", 2015. Configs and library code read
these names; nothing else in the codebase restates them.
"""

# §5.1 Models and training details.
LEARNING_RATE = 0.01          # "A learning rate of 0.01 is selected at the beginning ..."
LR_DECAY_FACTOR = 0.1         # "... and then divided by ten when the accuracy stops increasing."
DROPOUT_RATE = 0.5            # "the drop out ratio is 50%" (after FC1 and FC2)
CONV_KERNEL = 3               # "the kernel sizes of all convolutional layers are 3x3"
POOL_WINDOW = 2               # "The kernel sizes of all max-pooling layers are 2x2,
POOL_STRIDE = 2               #  and the stride sizes are 2."
CROP_SIZE = 224               # "randomly cropped into 224x224 patches for training"

# §5.1 says "mostly default hyper-parameters [22, 25, 45, 46]": these are the defaults of the
# VGG paper [45] (Simonyan & Zisserman 2014, §3.1), which the paper does not restate.
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4

# Figure 8: conv output channels per block and FC width of the basic 16/19-layer models.
BLOCK_CHANNELS = (64, 128, 256, 512, 512)
FC_WIDTH = 4096
CONVS_PER_BLOCK = {
    "vgg11": (1, 1, 2, 2, 2),   # 8 conv + 3 FC: the network of the §3.3 scaling test
    "vgg16": (2, 2, 3, 3, 3),   # 13 conv + 3 FC
    "vgg19": (2, 2, 4, 4, 4),   # 16 conv + 3 FC
}

# §4.2 Multi-scale training: separate models at these scales, 224 crops.
TRAIN_SCALES = (256, 512)

# §3.3 Scaling efficiency: images processed by each GPU per step ("slices = 64").
SLICES_PER_DEVICE = 64

# §4.1 Table 1: the number of possible changes of each augmentation.
TABLE1_SPACE_SIZES = {
    "color_cast": 68_920,
    "vignetting": 1_960,
    "lens_distortion": 260,
    "rotation": 20,
    "flipping": 2,
    "cropping": 82_944,        # 224x224 crops of a 512x512 image: (512 - 224)^2
}
COLOR_CAST_MAX_SHIFT = 20     # §4.1 "a random integer ranging from -20 to +20"

# §5.2 Oxford-IIIT Pets: "The learning rate starts from 0.001 and decreased to 0.0001."
PETS_LEARNING_RATE = 0.001
PETS_FINAL_LEARNING_RATE = 0.0001
