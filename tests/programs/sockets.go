// Makes a socket of each family (and netlink protocol) and prints the errno of each; a vsock
// that could be made is bound to port {{PORT}} of every CID and listened on.
package main

import (
	"fmt"
	"syscall"
	"unsafe"
)

func main() {
	fmt.Println("start")
	try := func(name string, family, typ, proto int) {
		fd, err := syscall.Socket(family, typ, proto)
		code := 0
		if err != nil {
			code = int(err.(syscall.Errno))
		} else {
			syscall.Close(fd)
		}
		fmt.Printf("%s %d\n", name, code)
	}
	try("unix", syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	try("inet", syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	try("inet6", syscall.AF_INET6, syscall.SOCK_STREAM, 0)
	try("netlink_route", syscall.AF_NETLINK, syscall.SOCK_RAW, syscall.NETLINK_ROUTE)
	try("netlink_generic", syscall.AF_NETLINK, syscall.SOCK_RAW, 16)
	try("netlink_netfilter", syscall.AF_NETLINK, syscall.SOCK_RAW, 12)
	try("netlink_uevent", syscall.AF_NETLINK, syscall.SOCK_DGRAM, 15)
	try("netlink_audit", syscall.AF_NETLINK, syscall.SOCK_RAW, 9)
	try("packet", syscall.AF_PACKET, syscall.SOCK_RAW, 0)
	try("alg", 38, syscall.SOCK_SEQPACKET, 0)
	try("key", syscall.AF_KEY, syscall.SOCK_RAW, 2)
	try("vsock", 40, syscall.SOCK_STREAM, 0)
	try("bluetooth", 31, syscall.SOCK_STREAM, 0)
	try("tipc", 30, syscall.SOCK_RDM, 0)
	_, _, e := syscall.RawSyscall6(syscall.SYS_SOCKETPAIR, 40, syscall.SOCK_STREAM, 0,
		0, 0, 0)
	fmt.Printf("socketpair_vsock %d\n", int(e))
	if pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0); err != nil {
		fmt.Printf("socketpair_unix %d\n", int(err.(syscall.Errno)))
	} else {
		syscall.Close(pair[0])
		syscall.Close(pair[1])
		fmt.Println("socketpair_unix 0")
	}
	// The attack itself: listen on a host-wide vsock port.
	fd, err := syscall.Socket(40, syscall.SOCK_STREAM, 0)
	if err == nil {
		// struct sockaddr_vm: family, reserved, port, cid (VMADDR_CID_ANY), zero
		var sa [16]byte
		sa[0] = 40
		port := uint32({{PORT}})
		sa[4], sa[5], sa[6], sa[7] = byte(port), byte(port>>8), byte(port>>16), byte(port>>24)
		sa[8], sa[9], sa[10], sa[11] = 0xff, 0xff, 0xff, 0xff
		_, _, e := syscall.RawSyscall(syscall.SYS_BIND, uintptr(fd), uintptr(unsafe.Pointer(&sa[0])), 16)
		if e == 0 {
			_, _, e = syscall.RawSyscall(syscall.SYS_LISTEN, uintptr(fd), 1, 0)
		}
		fmt.Printf("vsock_listen %d\n", int(e))
	}
	fmt.Println("end")
}
