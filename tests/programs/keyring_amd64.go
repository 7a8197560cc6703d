package main

const (
	sysAddKey     = 248
	sysRequestKey = 249
	sysKeyctl     = 250
)
