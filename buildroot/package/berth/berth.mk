################################################################################
#
# berth
#
################################################################################

# The project itself, from the checkout this external tree lives in.
BERTH_VERSION = local
BERTH_SITE = $(BR2_EXTERNAL_BERTH_PATH)/..
BERTH_SITE_METHOD = local
BERTH_LICENSE = Apache-2.0
BERTH_LICENSE_FILES = LICENSE

# Only the guest's binaries, with the workspace's size-optimised guest profile.
BERTH_CARGO_BUILD_OPTS = -p berth-init -p berth-netd -p berth-ctl --profile guest
BERTH_GUEST_DIR = $(@D)/target/$(RUSTC_TARGET_NAME)/guest

define BERTH_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(BERTH_GUEST_DIR)/init $(TARGET_DIR)/init
	$(INSTALL) -D -m 0755 $(BERTH_GUEST_DIR)/netd $(TARGET_DIR)/usr/lib/berth/netd
	$(INSTALL) -D -m 0755 $(BERTH_GUEST_DIR)/berthctl $(TARGET_DIR)/usr/bin/berthctl
endef

# The host tool: `berth build` assembles the initrd and disk image in post-image.sh.
HOST_BERTH_CARGO_BUILD_OPTS = -p berth-image --bin berth

define HOST_BERTH_INSTALL_CMDS
	$(INSTALL) -D -m 0755 $(@D)/target/release/berth $(HOST_DIR)/bin/berth
endef

$(eval $(cargo-package))
$(eval $(host-cargo-package))
