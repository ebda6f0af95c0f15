r"""Default protection: dlib's embedded ResNet plus every real encoder installed with
`idguardian-models install` (mobileface, faceres, faceres_deep), attacked together with transfer
techniques so that encoders the perturbation never saw are fooled too.

  idguardian-protect --input=photos/ --output=protected/
  idguardian-protect --config.budget=0.0235 ...   # 6/255

Budget 8/255 (the paper's), PSNR floor 36 dB, 100 sign steps of 1/255 with momentum, input
diversity, TI smoothing and a per-encoder balance toward each threshold: what docs/TRANSFER.md measures by
leaving each real encoder out of the attack and judging with it. The dlib-only sweep behind the
step size and jitter is in docs/DEFAULTS.md (experiments/sweep_defaults.py).
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    # L_inf budget on [0, 1] pixels (every written pixel moves by at most round(budget * 255)).
    # 8/255 is the paper's budget and the largest the transfer issue allows: at 6/255 (the
    # dlib-only default before) protection did not transfer to encoders of other families at all
    # (docs/TRANSFER.md).
    c.budget = 8 / 255
    # A floor on the full-photo PSNR (dB), enforced in the loop as an L2 ball and checked after
    # rounding; binds only where faces cover much of the photo. 0 turns it off.
    c.budget_psnr = 36.0  # the floor docs/TRANSFER.md measures at (binds only on close-ups)

    c.attack = ml_collections.ConfigDict()
    c.attack.steps = 100  # transfer needs more steps than white-box dlib (50 were enough there)
    c.attack.step_size = 1 / 255
    c.attack.optimizer = "sign"       # 'sign' (PGD) or 'adam'
    c.attack.schedule = "constant"    # 'constant', 'cosine', 'linear'
    c.attack.final_fraction = 0.1     # for decaying schedules
    c.attack.random_start = False
    c.attack.momentum = 0.9           # MI-FGSM momentum decay (sign steps); 0 = off
    c.attack.loop = "auto"            # 'scan' (one jit), 'host' (jitted step), 'auto'

    c.objective = ml_collections.ConfigDict()
    c.objective.encoders = (("dlib_resnet", 1.0),)
    # 'all': add every real encoder installed with `idguardian-models install` (mobileface,
    # faceres, faceres_deep), each with installed_weight; 'none': only the encoders listed above.
    c.objective.installed_encoders = "all"
    c.objective.installed_weight = 1.0
    c.objective.checkpoints = ml_collections.ConfigDict()  # encoder name -> checkpoint path
    c.objective.decoy_photo = ""      # pull toward this photo's face instead of away
    c.objective.cap = 0.0             # 0: no cap on the distance pushed for
    c.objective.quantize = True       # the loop sees the 8-bit photo that will be written
    # Perturb only inside each face's hull of dlib's 68 landmarks grown by this margin (relative);
    # -1: everywhere the views read (crop boxes). Measured (docs/TRANSFER.md, mobileface left
    # out): held-out similarity 0.739 with the mask vs 0.816 without, and the PSNR floor no
    # longer binds (37-38 dB vs 36.0): the budget goes where the identity is. Applies when the
    # 68 landmarks are found, i.e. with any encoder aligned InsightFace-style (the installed ones);
    # with dlib alone the crop boxes are the support, as before.
    c.objective.face_mask_margin = 0.1
    c.objective.jitter = ml_collections.ConfigDict()
    c.objective.jitter.shift_px = 2.0     # landmarks move ~1 px (up to 6-7) when found again
    c.objective.jitter.rotation = 0.03    # radians
    c.objective.jitter.scale = 0.03       # relative

    # Transfer techniques (idguardian_jax/attack/transfer.py), for encoders the perturbation is
    # not computed on: input diversity (probability per view and step, largest zoom-out, mirrored
    # views), TI gradient smoothing (kernel side at a 112 px chip; 0 = off), per-encoder balance,
    # feature loss, feature-map dropout and LinBP of the TF.js surrogates. Measured one by one
    # (docs/TRANSFER.md, mobileface left out of the attack and judging): none moved the left-out
    # judge by more than ~0.03 of similarity (0.80-0.84) except dropout, decoy and LinBP, which
    # made it worse; the surrogates' gradients are orthogonal across families (cosine ~0).
    # Kept on: momentum 0.9, diversity 0.7 (zoom-out up to 15%), TI 5 px (no cost per step).
    c.objective.transfer = ml_collections.ConfigDict()
    c.objective.transfer.diversity_prob = 0.7
    c.objective.transfer.diversity_scale = 0.15
    c.objective.transfer.ti_kernel = 5
    # Balance 'threshold' with L1-normalized gradients: every encoder's gradient at unit L1 norm
    # (a sign step's first-order progress), scaled by the distance still to its threshold x 1.25
    # (at least 0.1). Against 'gradient' (unit L2, no threshold weight), with all four encoders
    # in the attack (white-box, docs/TRANSFER.md): mobileface, the hardest, 0.718 -> 0.537
    # similarity, the faces fooled per encoder unchanged; its leave-one-out transfer the same
    # (0.832 vs 0.839, threshold weights with L2).
    c.objective.transfer.balance = "threshold"
    c.objective.transfer.balance_norm = "l1"
    c.objective.transfer.threshold_margin = 0.25
    c.objective.transfer.threshold_floor = 0.1
    c.objective.transfer.feature_weight = 0.0
    c.objective.transfer.dropout = 0.0
    c.objective.transfer.flip_prob = 0.0
    c.objective.transfer.linear_backward = 0.0
    # Spectrum simulation (SSA: noise of spectrum_sigma and a gain in [1 - rho, 1 + rho] per DCT
    # coefficient of each view) and gradient samples (draws averaged per step): mobileface left out
    # and judging, 6 held-out photos (docs/TRANSFER.md, third round), the judge's similarity
    # 0.828 -> 0.806 with rho 0.5 (1.5x the time) and 0.799 with 4 samples (3x), no verdict
    # changed: off. sigma 16/255 is SSA's own setting.
    c.objective.transfer.spectrum_rho = 0.0
    c.objective.transfer.spectrum_sigma = 16 / 255
    c.objective.transfer.samples = 1

    # Expectation over transformation (configs/robust.py turns it on): per step, one random
    # differentiable post-processing, strength uniform in the (low, high) range; () = off.
    c.objective.eot = ml_collections.ConfigDict()
    c.objective.eot.p_identity = 0.0
    c.objective.eot.jpeg_quality = ()
    c.objective.eot.resize_scale = ()
    c.objective.eot.blur_sigma = ()
    c.objective.eot.noise_std = ()

    # IDGuardian's injection stage (configs/idguardian.py turns it on): identity deflection
    # through a local diffusers folder (SD 1.x/2.x or SDXL) with an IP-Adapter; see
    # idguardian_jax/losses/deflection.py.
    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.enabled = False
    c.diffusion.model_dir = ""
    c.diffusion.ip_adapter = ""
    c.diffusion.prompt = "A photo of a person"
    c.diffusion.t_min = 0
    c.diffusion.t_max = 999
    c.diffusion.noise_samples = 1
    c.diffusion.variant = "upsample"   # 'upsample' (reference) or 'vae_vjp'
    c.diffusion.ip_scale = 1.0
    c.diffusion.weight = 1.0
    c.diffusion.dtype = "float32"      # 'bfloat16' / 'float16' on GPU
    # Classic baselines in the same loop (configs/baseline_*.py): 'advdm' or 'photoguard'
    c.diffusion.baseline = ""
    c.diffusion.baseline_weight = 1.0
    c.diffusion.baseline_view = "clip_vit"   # the aligned crop each face is attacked through
    c.diffusion.photoguard_target = 0.5      # gray level of PhotoGuard's target image

    c.detect = ml_collections.ConfigDict()
    c.detect.upsample = 1             # dlib's upsample_num_times, as face_recognition uses
    # Long side of the canvas faces are first looked for on (0: the full canvas, exact, cost ~13x
    # the photo's pixels); each face found is then re-detected at full resolution on the canvas
    # tiles around it, so boxes, landmarks and chips are dlib's upsample-1 ones. Photos whose
    # upsampled long side is <= max_side run the full canvas. See BENCHMARKS.md (detection).
    c.detect.max_side = 1024
    # After protection, faces are found again only near the clean faces ('near', equal to the full
    # re-detection there) or on the whole protected photo ('full').
    c.detect.measure = "near"

    c.batch = ml_collections.ConfigDict()
    c.batch.per_device = 1            # photos per device per program call

    # Dataset jobs (idguardian_jax/jobs.py): input pipeline threads and photos read ahead, how
    # often throughput is reported, and whether a folder holding another job may be redone.
    c.job = ml_collections.ConfigDict()
    c.job.read_threads = 2
    c.job.prefetch = 8
    c.job.report_every_s = 30.0
    c.job.allow_changed_settings = False

    c.output = ml_collections.ConfigDict()
    c.output.format = "png"           # 'png'; 'jpeg'/'webp' weaken the protection
    c.output.quality = 95             # for lossy formats
    c.output.strip_metadata = False
    c.output.keep_location = False    # EXIF GPS / XMP place names are dropped unless true
    c.output.on_no_face = "report"    # 'report' (write nothing) or 'copy' (write unchanged)
    c.output.max_pixels = 100_000_000
    return c
