"""The D2A U-Net of SPEC §2 in PyTorch: the yardstick `bench/compare.py` times d2a against.

Parameter counts equal d2a's (`d2a info`): d2a-vgg-tiny 2,414,439; d2a-vgg 38,486,817;
d2a-resnext50 100,834,833 (checked by `python3 bench/d2a_unet.py`).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(c_in, c_out, k=3, dilation=1, relu=True):
    layers = [nn.Conv2d(c_in, c_out, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
              nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def up2(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class ChannelMap(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        hidden = max(1, c_out // 16)
        self.mlp = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, c_out))

    def forward(self, x):
        return torch.sigmoid(self.mlp(x.mean((2, 3))))[:, :, None, None]


class MultiScale(nn.Module):
    def __init__(self, c_in):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(c_in, 1, k, padding=k // 2) for k in (3, 5, 7)])

    def forward(self, s):
        return torch.sigmoid(sum(c(s) for c in self.convs))


class Gam(nn.Module):
    def __init__(self, c_g, c_x):
        super().__init__()
        self.channel = ChannelMap(c_g, c_x)
        self.squeeze_g = nn.Conv2d(c_g, 1, 1)
        self.squeeze_x = nn.Conv2d(c_x, 1, 1)
        self.spatial = MultiScale(2)

    def forward(self, g, x):
        s = torch.cat([up2(self.squeeze_g(g)), self.squeeze_x(x)], 1)
        return x * self.channel(g) * self.spatial(s)


class Dam(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.channel = ChannelMap(c, c)
        self.squeeze = nn.Conv2d(c, 1, 1)
        self.spatial = MultiScale(1)

    def forward(self, x):
        return x * self.channel(x) * self.spatial(self.squeeze(x))


class Rab(nn.Module):
    def __init__(self, c_in, c_out, dam=True):
        super().__init__()
        self.hdc = nn.Sequential(conv_bn(c_in, c_out, 3, 1), conv_bn(c_out, c_out, 3, 2),
                                 conv_bn(c_out, c_out, 3, 5, relu=False))
        self.dam = Dam(c_out) if dam else nn.Identity()
        self.shortcut = nn.Identity() if c_in == c_out else conv_bn(c_in, c_out, 1, relu=False)

    def forward(self, x):
        return F.relu(self.dam(self.hdc(x)) + self.shortcut(x))


class Stage(nn.Module):
    def __init__(self, c_d, c_e):
        super().__init__()
        self.up = conv_bn(c_d, c_e)
        self.gam = Gam(c_d, c_e)
        self.rab = Rab(2 * c_e, c_e)

    def forward(self, d, e):
        return self.rab(torch.cat([self.up(up2(d)), self.gam(d, e)], 1))


class Vgg(nn.Module):
    def __init__(self, width):
        super().__init__()
        widths = [width * m for m in (1, 2, 4, 8, 16)]
        c_in, stages = 1, []
        for c in widths:
            stages.append(nn.Sequential(conv_bn(c_in, c), conv_bn(c, c)))
            c_in = c
        self.stages = nn.ModuleList(stages)
        self.channels = widths

    def forward(self, x):
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        return feats


class ResNeXtEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        import torchvision
        net = torchvision.models.resnext50_32x4d()
        del net.fc
        self.net = net
        self.channels = [64, 256, 512, 1024, 2048]
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406])[None, :, None, None])
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225])[None, :, None, None])

    def forward(self, x):
        n = self.net
        x = (x.repeat(1, 3, 1, 1) - self.mean) / self.std
        e0 = n.relu(n.bn1(n.conv1(x)))
        e1 = n.layer1(n.maxpool(e0))
        e2 = n.layer2(e1)
        e3 = n.layer3(e2)
        return [e0, e1, e2, e3, n.layer4(e3)]


class D2AUNet(nn.Module):
    def __init__(self, encoder="vgg", width=16):
        super().__init__()
        self.encoder = Vgg(width) if encoder == "vgg" else ResNeXtEncoder()
        self.final_up = encoder != "vgg"
        c = self.encoder.channels
        self.decoder = nn.ModuleList([Stage(c[4 - i], c[3 - i]) for i in range(4)])
        self.head = conv_bn(c[0], 32)
        self.out = nn.Conv2d(32, 1, 1)

    def forward(self, x):
        feats = self.encoder(x)
        d = feats[4]
        for i, stage in enumerate(self.decoder):
            d = stage(d, feats[3 - i])
        if self.final_up:
            d = up2(d)
        return self.out(self.head(d))


def build(name):
    return {
        "d2a-vgg-tiny": lambda: D2AUNet("vgg", 16),
        "d2a-vgg": lambda: D2AUNet("vgg", 64),
        "d2a-resnext50": lambda: D2AUNet("resnext50"),
    }[name]()


def dice_bce(logits, y):
    bce = F.binary_cross_entropy_with_logits(logits, y)
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
    return bce + dice


if __name__ == "__main__":
    for name, want in [("d2a-vgg-tiny", 2_414_439), ("d2a-vgg", 38_486_817), ("d2a-resnext50", 100_834_833)]:
        got = sum(p.numel() for p in build(name).parameters())
        print(f"{name}: {got} parameters ({'ok' if got == want else f'expected {want}'})")
