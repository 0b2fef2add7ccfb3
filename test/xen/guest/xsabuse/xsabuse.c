// SPDX-License-Identifier: GPL-2.0
/*
 * A guest that misbehaves on its real xenstore ring, for the real-Xen
 * tests: loaded into a Linux PV guest, it writes into the ring page the
 * kernel's xenbus driver shares with xenstored what no well-behaved guest
 * writes, and signals xenstored. xenstored must drop this guest's
 * connection and go on serving everyone else (xs_wire.h, xenstore-ring.txt).
 *
 *   mode=indexes  req_prod moved past req_cons by more than the ring holds
 *   mode=length   a request header whose length exceeds XENSTORE_PAYLOAD_MAX
 *   mode=stall    the xenstore interrupt disabled: the kernel no longer reads
 *                 its replies and watch events, which pile up in the ring
 *
 * It touches nothing but the ring page and the event channel the kernel
 * already has (xen_store_interface, xen_store_evtchn): the guest's own
 * xenstore traffic is what is lost, as on a real host. The ring's error
 * field (what xenstored said when it dropped the connection) can be read
 * at any time from /sys/module/xsabuse/parameters/ring_error, its indexes
 * from ring_indexes.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/string.h>
#include <linux/sysfs.h>
#include <linux/interrupt.h>
#include <xen/events.h>
#include <xen/interface/io/xs_wire.h>

/* drivers/xen/xenbus/xenbus_probe.c exports both (GPL). */
extern struct xenstore_domain_interface *xen_store_interface;
extern evtchn_port_t xen_store_evtchn;

static char *mode = "indexes";
module_param(mode, charp, 0444);
MODULE_PARM_DESC(mode, "indexes | length | stall");

static int ring_error_get(char *buffer, const struct kernel_param *kp)
{
	return sysfs_emit(buffer, "%u\n", READ_ONCE(xen_store_interface->error));
}

static const struct kernel_param_ops ring_error_ops = {
	.get = ring_error_get,
};
module_param_cb(ring_error, &ring_error_ops, NULL, 0444);
MODULE_PARM_DESC(ring_error, "the ring's error field: XENSTORE_ERROR_* (0: none)");

static int ring_indexes_get(char *buffer, const struct kernel_param *kp)
{
	struct xenstore_domain_interface *intf = xen_store_interface;

	return sysfs_emit(buffer, "req=%u..%u rsp=%u..%u\n", READ_ONCE(intf->req_cons), READ_ONCE(intf->req_prod),
			  READ_ONCE(intf->rsp_cons), READ_ONCE(intf->rsp_prod));
}

static const struct kernel_param_ops ring_indexes_ops = {
	.get = ring_indexes_get,
};
module_param_cb(ring_indexes, &ring_indexes_ops, NULL, 0444);
MODULE_PARM_DESC(ring_indexes, "the ring's four indexes, consumer..producer of each direction");

/* The xenstore interrupt, while mode=stall holds it disabled. */
static int stalled_irq = -1;

/* By how much req_prod is moved past what the ring can hold. */
#define BAD_INDEX_EXCESS 1234u
#define BAD_REQ_ID 0x5ab05eu

static void write_bad_indexes(struct xenstore_domain_interface *intf)
{
	intf->req_prod = intf->req_cons + XENSTORE_RING_SIZE + BAD_INDEX_EXCESS;
}

static void write_long_header(struct xenstore_domain_interface *intf)
{
	struct xsd_sockmsg msg = {
		.type = XS_READ,
		.req_id = BAD_REQ_ID,
		.tx_id = 0,
		.len = XENSTORE_PAYLOAD_MAX + 1,
	};
	const char *bytes = (const char *)&msg;
	XENSTORE_RING_IDX prod = intf->req_prod;
	size_t i;

	for (i = 0; i < sizeof(msg); i++)
		intf->req[MASK_XENSTORE_IDX(prod + i)] = bytes[i];
	/* The header before the index that publishes it (ring.h's rule). */
	wmb();
	intf->req_prod = prod + sizeof(msg);
}

/*
 * The kernel's xenbus thread reads the ring when the xenstore interrupt
 * wakes it: with the interrupt off (and no xenstore request of the guest's
 * own to wake it) nothing is read any more, while xenstored keeps writing.
 */
static int stall_reading(void)
{
	int irq = irq_from_evtchn(xen_store_evtchn);

	if (irq < 0)
		return -ENODEV;
	disable_irq(irq);
	stalled_irq = irq;
	pr_warn("xsabuse: xenstore interrupt %d (port %u) disabled: the ring is no longer read (rsp %u..%u)\n",
		irq, xen_store_evtchn, xen_store_interface->rsp_cons, xen_store_interface->rsp_prod);
	return 0;
}

static int __init xsabuse_init(void)
{
	struct xenstore_domain_interface *intf = xen_store_interface;

	if (!intf)
		return -ENODEV;
	if (strcmp(mode, "stall") == 0)
		return stall_reading();
	if (strcmp(mode, "indexes") == 0)
		write_bad_indexes(intf);
	else if (strcmp(mode, "length") == 0)
		write_long_header(intf);
	else
		return -EINVAL;
	wmb();
	notify_remote_via_evtchn(xen_store_evtchn);
	pr_warn("xsabuse: wrote %s into the xenstore ring (req %u..%u) and signalled port %u\n",
		mode, intf->req_cons, intf->req_prod, xen_store_evtchn);
	return 0;
}

static void __exit xsabuse_exit(void)
{
	if (stalled_irq >= 0)
		enable_irq(stalled_irq);
}

module_init(xsabuse_init);
module_exit(xsabuse_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("misbehave on the xenstore ring, for xenstored's tests");
